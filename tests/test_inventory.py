"""roles.yaml loading: ssh settings, roles, selection and error messages."""

from pathlib import Path

import pytest

from cluster.errors import InputError, InventoryError
from cluster.inventory import SSHSettings, load_inventory, parse_inventory

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "roles.yaml"
    path.write_text(text)
    return path


def test_shipped_roles_file_works_on_one_machine():
    inventory = load_inventory(ROOT / "roles.yaml")
    assert inventory.ssh.fanout == 64 and inventory.ssh.host_key_policy is None
    assert [str(h) for h in inventory.all_hosts()] == ["local"]


def test_shipped_roles_file_shows_the_pd_layout_as_comment():
    text = (ROOT / "roles.yaml").read_text()
    assert "#   prefill: 10.8.0.81" in text and "#   decode: 10.8.0.82,10.8.0.83" in text


def test_roles_and_ssh_section(tmp_path: Path):
    path = write(tmp_path, """
ssh: {user: ubuntu, port: 2222, connect_timeout: 3, fanout: 8, host_key_policy: strict}
roles:
  prefill: 10.8.0.81
  decode: [10.8.0.82, 10.8.0.83]
""")
    inv = load_inventory(path)
    assert inv.ssh == SSHSettings(user="ubuntu", port=2222, connect_timeout=3, fanout=8,
                                  host_key_policy="strict")
    assert [str(h) for h in inv.select(roles="decode,prefill")] == ["10.8.0.82", "10.8.0.83", "10.8.0.81"]
    assert [str(h) for h in inv.select()] == ["10.8.0.81", "10.8.0.82", "10.8.0.83"]
    assert [str(h) for h in inv.select(hosts="10.8.0.90", roles="prefill")] == ["10.8.0.81", "10.8.0.90"]


def test_env_var_names_the_roles_file(tmp_path: Path, monkeypatch):
    path = write(tmp_path, "roles: {gpu: 'gpu[1-2]'}\n")
    monkeypatch.setenv("CLUSTER_ROLES", str(path))
    assert [str(h) for h in load_inventory().all_hosts()] == ["gpu1", "gpu2"]


def test_missing_default_file_is_an_empty_inventory(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CLUSTER_ROLES", raising=False)
    monkeypatch.chdir(tmp_path)
    inv = load_inventory()
    assert inv.roles == {} and inv.path is None
    with pytest.raises(InputError, match="no hosts selected"):
        inv.select()


def test_missing_explicit_file_is_an_error(tmp_path: Path):
    with pytest.raises(InventoryError, match="roles file not found: .*other.yaml"):
        load_inventory(tmp_path / "other.yaml")


@pytest.mark.parametrize("text, expected", [
    ("roles: [a\n", r"roles.yaml: line \d+, column \d+: invalid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("ssh: {colour: red}\n", r"ssh\.colour: unknown key"),
    ("ssh: {port: abc}\n", r"ssh\.port: bad value 'abc'"),
    ("ssh: {port: 0}\n", r"ssh\.port: 0 is not in 1-65535"),
    ("ssh: {fanout: 0}\n", "fanout must be >= 1"),
    ("ssh: {host_key_policy: yolo}\n", r"ssh\.host_key_policy: 'yolo' is not one of"),
    ("roles: {decode: 'gpu[1-'}\n", r"roles\.decode: bad range"),
    ("roles: {decode: '@missing.txt'}\n", r"roles\.decode: host file not found"),
    ("roles: {decode: {a: 1}}\n", r"roles\.decode: expected a host expression"),
])
def test_errors_name_file_key_and_value(tmp_path: Path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=expected) as info:
        load_inventory(path)
    assert str(path) in str(info.value) or "fanout" in str(info.value)


def test_unknown_role_lists_the_known_ones(tmp_path: Path):
    inv = parse_inventory("roles: {prefill: a, decode: b}\n", tmp_path / "roles.yaml")
    with pytest.raises(InventoryError, match="unknown role 'router'.*known roles: prefill, decode"):
        inv.select(roles="router")


def test_other_sections_are_kept_for_their_owners(tmp_path: Path):
    inv = parse_inventory("serving: {engine: sglang}\nroles: {}\n", tmp_path / "roles.yaml")
    assert inv.sections == {"serving": {"engine": "sglang"}}


def test_cli_overrides(tmp_path: Path):
    settings = SSHSettings().with_overrides(fanout="4", user=None)
    assert settings.fanout == 4 and settings.user is None
    with pytest.raises(InputError):
        SSHSettings().with_overrides(fanout="many")
