"""Pure parts of connecting like ssh: host forms, `ssh -G` parsing, ProxyJump, tokens, key files."""

from __future__ import annotations

import os
import subprocess

import paramiko
import pytest

from cluster.connect import JumpSpec, expand_tokens, parse_proxy_jump
from cluster.hosts import Host, parse_hosts
from cluster.inventory import SSHSettings
from cluster.keys import ENCRYPTED, OK, KeyRing, load_key_file
from cluster.sshconfig import HostConfig, Resolver, expand_includes, host_config, parse_g


@pytest.mark.parametrize("text, host", [
    ("[::1]", Host("::1")),
    ("[::1]:2222", Host("::1", None, 2222)),
    ("user@[::1]:2222", Host("::1", "user", 2222)),
    ("user@[::1]", Host("::1", "user")),
    ("::1", Host("::1")),
    ("[fe80::1]:22", Host("fe80::1", None, 22)),
])
def test_ipv6_host_forms(text, host):
    assert parse_hosts(text) == [host]


def test_ipv6_next_to_ranges_in_one_expression():
    hosts = parse_hosts("[::1]:2222, gpu[1-2] user@[::1]:2223")
    assert [str(h) for h in hosts] == ["[::1]:2222", "gpu1", "gpu2", "user@[::1]:2223"]


G_OUTPUT = """host gpu-1
user ubuntu
hostname 10.8.0.81
port 2222
identityfile ~/.ssh/google_compute_engine
identityfile ~/.ssh/id_ed25519
certificatefile /k/cert.pub
proxyjump none
connecttimeout 7
serveraliveinterval 15
serveralivecountmax 2
forwardagent yes
identityagent none
userknownhostsfile /h/.ssh/google_compute_known_hosts
globalknownhostsfile /etc/ssh/ssh_known_hosts
hostkeyalias compute.123
stricthostkeychecking yes
hashknownhosts yes
checkhostip no
identitiesonly yes
garbage-line-without-value
"""


def test_g_output_becomes_a_host_config():
    config = host_config("gpu-1", parse_g(G_OUTPUT), ("/h", "/tmp/home"))
    assert (config.hostname, config.user, config.port) == ("10.8.0.81", "ubuntu", 2222)
    assert config.identity_files == ("~/.ssh/google_compute_engine", "~/.ssh/id_ed25519")
    assert config.proxy_jump is None  # "none" means direct
    assert config.connect_timeout == 7.0 and config.server_alive_interval == 15
    assert config.server_alive_count_max == 2 and config.forward_agent and config.identities_only
    assert config.user_known_hosts == ("/tmp/home/.ssh/google_compute_known_hosts",)  # mapped to $HOME
    assert config.host_key_alias == "compute.123" and config.strict_host_key_checking == "yes"
    assert config.hash_known_hosts and not config.check_host_ip


def test_g_output_defaults_when_keys_are_missing():
    config = host_config("x", parse_g("hostname x\nconnecttimeout none\n"))
    assert config.connect_timeout is None and config.port == 22 and config.proxy_command is None


def test_proxy_jump_forms():
    assert parse_proxy_jump("none") == [] and parse_proxy_jump(None) == []
    assert parse_proxy_jump("a@b:1,c,ssh://d@[::1]:22") == [
        JumpSpec("b", "a", 1), JumpSpec("c"), JumpSpec("::1", "d", 22)]
    with pytest.raises(ValueError):
        parse_proxy_jump("a@b:x:y")


def test_proxy_command_tokens():
    config = HostConfig(alias="gpu-1", hostname="10.8.0.81", user="u", port=2222, host_key_alias="k")
    assert expand_tokens("nc %h %p # %n %r %k 100%%", config) == "nc 10.8.0.81 2222 # gpu-1 u k 100%"


def test_resolver_uses_ssh_g_with_include_and_match(tmp_path):
    included = tmp_path / "inc.conf"
    included.write_text("Host gpu-*\n  User ubuntu\n  ConnectTimeout 3\n")
    config = tmp_path / "config"
    config.write_text(f"Include {included}\nMatch host gpu-2\n  Port 2202\nHost gpu-*\n  HostName %h.internal\n")
    resolver = Resolver(str(config))
    one, two = resolver.resolve("gpu-1"), resolver.resolve("gpu-2", port=2999)
    assert (one.hostname, one.user, one.port, one.connect_timeout) == ("gpu-1.internal", "ubuntu", 22, 3.0)
    assert two.port == 2999  # the command line (-p) wins over Match
    assert resolver.resolve("gpu-1") is one  # cached
    fallback = Resolver(str(config), ssh_path="")  # no OpenSSH client: paramiko + Include
    assert fallback.resolve("gpu-1").user == "ubuntu" and fallback.resolve("gpu-1").connect_timeout == 3.0
    assert "User ubuntu" in expand_includes(config)


def test_unset_roles_values_never_override_ssh_config():
    settings = SSHSettings()
    assert settings.connect_timeout is None and settings.host_key_policy is None
    assert settings.known_hosts is None and settings.timeout_or_default == 10.0


def _keygen(path, passphrase=""):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)


def test_encrypted_key_is_skipped_not_a_traceback(tmp_path):
    _keygen(tmp_path / "enc", "secret")
    _keygen(tmp_path / "plain")
    encrypted = load_key_file(str(tmp_path / "enc"))
    assert encrypted.state == ENCRYPTED and encrypted.pkey is None and encrypted.fingerprint
    assert load_key_file(str(tmp_path / "plain")).state == OK
    offered, skipped = KeyRing().candidates([], (str(tmp_path / "enc"), str(tmp_path / "plain")), (), "none", False)
    assert [c.label for c in offered] == [str(tmp_path / "plain")]
    assert skipped == [f"{tmp_path / 'enc'} (encrypted, not in agent)"]


def test_every_key_in_order_once_each_with_its_certificate(tmp_path):
    for name in ("a", "b", "c"):
        _keygen(tmp_path / name)
    ca = tmp_path / "ca"
    _keygen(ca)
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "id", "-n", "u", str(tmp_path / "b.pub")], check=True)
    files = (str(tmp_path / "c"), str(tmp_path / "b"), str(tmp_path / "a"), str(tmp_path / "c"))
    offered, skipped = KeyRing().candidates([str(tmp_path / "a")], files, (), "none", False)
    assert [c.label for c in offered] == [str(tmp_path / n) for n in ("a", "c", "b")] and not skipped
    assert offered[2].pkey.public_blob is not None  # b-cert.pub loaded with b
    assert offered[0].pkey.public_blob is None


def test_auth_failure_lists_what_was_tried_and_hints_ssh_add(tmp_path):
    _keygen(tmp_path / "enc", "secret")
    ring = KeyRing()
    offered, skipped = ring.candidates([], (str(tmp_path / "enc"),), (), "none", False)
    error = ring.strategy("ubuntu", offered, skipped).failure()
    assert isinstance(error, paramiko.AuthenticationException)
    assert "encrypted, not in agent" in str(error)
    assert error.hint.startswith(f"unlock the key in ssh-agent: `ssh-add {tmp_path / 'enc'}`")


def test_ensure_key_reports_encrypted_files_and_agent_keys(clean_env):
    from cluster.checks import ensure_key

    _keygen(clean_env / ".ssh" / "id_ed25519", "secret")
    report = ensure_key(SSHSettings(), gcloud="")
    assert not report.ok and f"ssh-add {clean_env / '.ssh' / 'id_ed25519'}" in report.description
    assert report.keys == [f"{clean_env / '.ssh' / 'id_ed25519'}: encrypted, not in agent"]
    _keygen(clean_env / ".ssh" / "id_rsa")
    report = ensure_key(SSHSettings(), gcloud="")
    assert report.ok and report.to_json()["keys"][0].startswith(f"{clean_env / '.ssh' / 'id_rsa'}: ok (ssh-ed25519 ")


def test_home_config_is_read_from_home_when_home_is_not_the_passwd_home(clean_env):
    (clean_env / ".ssh" / "config").write_text("Host fromhome\n  HostName 10.8.0.81\n  User ubuntu\n")
    resolver = Resolver()
    config = resolver.resolve("fromhome")
    assert (config.hostname, config.user) == ("10.8.0.81", "ubuntu")
    assert all(path.startswith(str(clean_env)) for path in config.user_known_hosts)  # ~ is $HOME
    wrapper = resolver._wrapper
    resolver.close()
    assert wrapper and not os.path.exists(wrapper)
