"""Bounded, validated input in the library (issue 14, items 8, 10-13): each bound is checked
where the input is read, before anything is expanded or any host is contacted. The CLI view
of the same inputs (exit 2, one line) is tests/test_cli_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import hosts as hosts_module
from cluster.errors import HostExpressionError, InputError, InventoryError, ParameterError, quoted
from cluster.hostkeys import check_known_hosts_path
from cluster.hosts import Host, parse_host, parse_hosts, range_count
from cluster.inventory import Inventory, load_inventory, load_yaml, parse_inventory
from cluster.logs import check_save_dir
from cluster.options import name, seconds
from cluster_cli.program import parse_error_line

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


# ------------------------------------------------------------------ host expressions (item 8, 11)


def test_port_that_is_not_a_number_is_bad_input():
    with pytest.raises(HostExpressionError, match="127.0.5.1:abc"):
        parse_host("127.0.5.1:abc")
    assert parse_host("127.0.5.1:2222") == Host("127.0.5.1", None, 2222)
    assert parse_host("[::1]:2222") == Host("::1", None, 2222)


def test_range_count_counts_without_expanding():
    assert range_count("127.[0-255].[0-255].[0-255]") == 256 ** 3
    assert range_count("a[1-100000000]") == 100_000_000
    assert range_count("gpu[01-16,20,30-40/2]") == 16 + 1 + 6
    assert range_count("plain") == 1


def test_expansion_over_the_cap_fails_before_nodeset_expands(monkeypatch):
    def no_expansion(*args, **kwargs):
        raise AssertionError("NodeSet was asked to expand a range over the cap")

    monkeypatch.setattr("ClusterShell.NodeSet.NodeSet", no_expansion)
    with pytest.raises(HostExpressionError, match="more than 100,000 hosts"):
        parse_hosts("a[1-100000000]")
    with pytest.raises(HostExpressionError, match="more than 100,000 hosts"):
        parse_hosts("127.[0-255].[0-255].[0-255]")


def test_the_cap_counts_the_whole_expression_and_is_adjustable():
    assert len(parse_hosts("gpu[1-3] gpu[4-6]", max_hosts=6)) == 6
    with pytest.raises(HostExpressionError, match="more than 5 hosts"):
        parse_hosts("gpu[1-3] gpu[4-6]", max_hosts=5)
    with pytest.raises(HostExpressionError, match="more than 2 hosts"):
        parse_hosts("a,b,c", max_hosts=2)


def test_host_file_is_read_with_a_size_cap(tmp_path, monkeypatch):
    with pytest.raises(HostExpressionError, match="/dev/zero is larger than"):
        parse_hosts("@/dev/zero")
    monkeypatch.setattr(hosts_module, "MAX_HOST_FILE_BYTES", 64)
    big = tmp_path / "big"
    big.write_text("local\n" + "#" * 100 + "\n")
    with pytest.raises(HostExpressionError, match="larger than 64 bytes"):
        parse_hosts(f"@{big}")


def test_host_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"l\xffocal\n")
    with pytest.raises(HostExpressionError, match="not UTF-8 text .*0xff at offset 1"):
        parse_hosts(f"@{bad}")


# ------------------------------------------------------------------ selections (item 10)


@pytest.mark.parametrize("hosts,roles", [("", None), (None, ""), (" , ", None), ([], None)])
def test_an_empty_selection_is_an_error_not_every_host(hosts, roles):
    inventory = Inventory(roles={"a": [Host("10.8.0.81")]})
    with pytest.raises(InputError, match="no hosts selected"):
        inventory.select(hosts=hosts, roles=roles)
    assert inventory.select() == [Host("10.8.0.81")]


# ------------------------------------------------------------------ the roles file (items 8, 11, 12)


def test_alias_bomb_is_refused_quickly():
    with pytest.raises(InventoryError, match="more than 1,000,000 YAML nodes"):
        load_yaml(BOMB, Path("bomb.yaml"))
    with pytest.raises(InventoryError, match="YAML nodes"):
        load_yaml("a: &a [1, *a]", Path("loop.yaml"))  # a node inside itself


def test_ordinary_anchors_still_load():
    doc = load_yaml("a: &x [1, 2]\nb: *x\nc: [*x, *x]\n", Path("ok.yaml"))
    assert doc == {"a": [1, 2], "b": [1, 2], "c": [[1, 2], [1, 2]]}


def test_nesting_too_deep_is_an_inventory_error():
    with pytest.raises(InventoryError, match="nested too deeply"):
        load_yaml("[" * 20000 + "]" * 20000, Path("deep.yaml"))


def test_roles_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "roles.yaml"
    path.write_bytes(b"roles:\n  a: \xff\n")
    with pytest.raises(InventoryError, match="not UTF-8"):
        load_inventory(path)


def test_unknown_top_level_key_is_an_error():
    with pytest.raises(InventoryError, match="'rolez': unknown top-level key"):
        parse_inventory("rolez:\n  a: local\n", Path("roles.yaml"))
    assert parse_inventory("serving: {}\ngpu: {}\nroles: {a: local}\n", Path("r.yaml")).roles


def test_limits_max_hosts_caps_roles_and_selections():
    inventory = parse_inventory("limits: {max_hosts: 4}\nroles:\n  a: gpu[1-4]\n", Path("r.yaml"))
    assert inventory.max_hosts == 4
    with pytest.raises(HostExpressionError, match="more than 4 hosts"):
        inventory.select(hosts="gpu[1-5]")
    with pytest.raises(InventoryError, match="more than 4 hosts"):
        parse_inventory("limits: {max_hosts: 4}\nroles:\n  a: gpu[1-5]\n", Path("r.yaml"))
    with pytest.raises(InventoryError, match="limits.max_hosts"):
        parse_inventory("limits: {max_hosts: 0}\n", Path("r.yaml"))


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "0", "-1"])
def test_connect_timeout_must_be_finite_and_positive(value):
    with pytest.raises(InventoryError, match="connect_timeout"):
        parse_inventory(f"ssh:\n  connect_timeout: {value}\n", Path("r.yaml"))


def test_error_values_are_quoted_short():
    assert len(quoted("x" * 5000)) < 260 and "5,000 characters" in quoted("x" * 5000)
    assert quoted("\x1b]0;title\x07") == repr("\x1b]0;title\x07")
    shared = [1] * 9
    for _ in range(8):
        shared = [shared] * 9  # 9**9 leaves when printed in full
    assert len(quoted(shared)) < 260
    with pytest.raises(InventoryError) as caught:
        parse_inventory("roles:\n  a: {x: " + "y" * 5000 + "}\n", Path("r.yaml"))
    assert len(str(caught.value)) < 400


# ------------------------------------------------------------------ option values (items 8, 10, 12)


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "-inf", "1e999"])
def test_seconds_must_be_finite_and_positive(value):
    with pytest.raises(ParameterError, match="timeout"):
        seconds(value, "timeout")
    assert seconds("2.5", "timeout") == 2.5


@pytest.mark.parametrize("value", ["-x", "--model", "a/b", "a b", "", "d" * 65, "x\n"])
def test_names_reaching_files_and_commands_are_checked(value):
    with pytest.raises(ParameterError, match="deployment"):
        name(value, "deployment")
    assert name("prod-2.a_b", "deployment") == "prod-2.a_b"


# ------------------------------------------------------------------ local files (item 13)


def test_known_hosts_path_problems_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        check_known_hosts_path(str(tmp_path))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(InputError, match="not a directory"):
        check_known_hosts_path(str(a_file / "known_hosts"))
    check_known_hosts_path(str(tmp_path / "new" / "known_hosts"))  # created when needed
    check_known_hosts_path("/dev/null")


def test_save_dir_problems_are_parameter_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(ParameterError, match="save"):
            check_save_dir(bad)
    assert check_save_dir(tmp_path / "new") == tmp_path / "new"
    assert list((tmp_path / "new").iterdir()) == []  # the write check leaves nothing


# ------------------------------------------------------------------ invoke's parser (item 9)


def test_parser_errors_in_the_users_words():
    from invoke import ParseError

    assert parse_error_line(ParseError("Flag <Argument: timeout> needed value and was not given one!")) == \
        "error: --timeout needs a value"
    assert "missing COMMAND" in parse_error_line(
        ParseError("'run' did not receive required positional arguments: 'command'"))
    assert "'\\x1b[2J'" in parse_error_line(ParseError("No idea what '\x1b[2J' is!"))
