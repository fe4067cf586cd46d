"""Host expressions: lists, user@host:port, ranges, @file, local, order and duplicates."""

from pathlib import Path

import pytest

from cluster.errors import HostExpressionError
from cluster.hosts import Host, fold_names, parse_host, parse_hosts, split_items


def names(hosts):
    return [str(h) for h in hosts]


def test_commas_and_whitespace_keep_order_and_drop_duplicates():
    hosts = parse_hosts("10.8.0.83, 10.8.0.81\n10.8.0.82,10.8.0.81  10.8.0.83")
    assert names(hosts) == ["10.8.0.83", "10.8.0.81", "10.8.0.82"]


def test_user_host_port_shorthand():
    assert parse_host("ubuntu@10.8.0.81:2222") == Host("10.8.0.81", "ubuntu", 2222)
    assert parse_host("gpu01") == Host("gpu01")
    assert str(Host("10.8.0.81", "ubuntu", 2222)) == "ubuntu@10.8.0.81:2222"


def test_same_name_different_port_is_a_different_host():
    assert len(parse_hosts("h:22 h:2222 h:22")) == 2


def test_ranges_expand_in_order_with_padding():
    assert names(parse_hosts("10.8.0.[81-83]")) == ["10.8.0.81", "10.8.0.82", "10.8.0.83"]
    assert names(parse_hosts("gpu[01-03,05]")) == ["gpu01", "gpu02", "gpu03", "gpu05"]
    assert names(parse_hosts("gpu[09-10] gpu[01-02]")) == ["gpu09", "gpu10", "gpu01", "gpu02"]


def test_range_with_user_and_port():
    hosts = parse_hosts("root@10.8.0.[81-82]:2222")
    assert hosts == [Host("10.8.0.81", "root", 2222), Host("10.8.0.82", "root", 2222)]


def test_comma_inside_brackets_is_part_of_the_range():
    assert split_items("a[1,3],b c") == ["a[1,3]", "b", "c"]


@pytest.mark.parametrize("bad", ["gpu[01-", "gpu[a-b]", "gpu[3-1]", "gpu[]", "h:0", "h:70000"])
def test_bad_expressions_raise_clear_errors(bad):
    with pytest.raises(HostExpressionError) as info:
        parse_hosts(bad)
    assert bad.split("[")[0] in str(info.value)


def test_at_file_reads_hosts_with_comments(tmp_path: Path):
    (tmp_path / "decode.txt").write_text("# decode nodes\n10.8.0.82  # first\n10.8.0.[83-84]\n\n")
    hosts = parse_hosts("10.8.0.81 @decode.txt", base_dir=tmp_path)
    assert names(hosts) == ["10.8.0.81", "10.8.0.82", "10.8.0.83", "10.8.0.84"]


def test_missing_at_file_names_the_file(tmp_path: Path):
    with pytest.raises(HostExpressionError, match="host file not found: .*nope.txt"):
        parse_hosts("@nope.txt", base_dir=tmp_path)


def test_local_is_the_controller():
    (host,) = parse_hosts("local")
    assert host.is_local and not Host("10.8.0.81").is_local


def test_ipv6_loopback():
    assert parse_host("::1") == Host("::1")
    assert parse_host("[::1]:2222") == Host("::1", None, 2222)


def test_fold_names_like_clush():
    assert fold_names(["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"]) == "127.0.1.[1-4]"
    assert fold_names(["gpu01", "gpu02", "gpu04"]) == "gpu[01-02,04]"
    assert fold_names(["root@h:22", "a1", "a2"]) == "a[1-2],root@h:22"
