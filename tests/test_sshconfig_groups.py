"""ssh_config resolution by groups: hosts the config files treat alike share two `ssh -G` runs.

The oracle is OpenSSH itself: every config here is resolved twice, host by host
(`Resolver(group=False)`: one ``ssh -G`` per host) and by groups, and each host's
`HostConfig` must be the same. The ``ssh_g_runs`` counts show the grouping happened
(or, for configs a group cannot describe, that it did not).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from cluster.sshconfig import HostBlocks, Resolver, derivation, host_config

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (.ci/run installs it)")

FLEET = [f"127.1.{a}.{b}" for a in (0, 1) for b in range(1, 11)] + ["gpu-a1", "gpu-b2", "Gpu-C3", "login"]


def _both(config: Path, hosts: list[str], user: str | None = None, port: int | None = None):
    alone = Resolver(str(config), group=False)
    grouped = Resolver(str(config))
    expected = {h: alone.resolve(h, user, port) for h in hosts}
    got = {h: grouped.resolve(h, user, port) for h in hosts}
    assert alone.ssh_g_runs == len(hosts)
    return expected, got, grouped.ssh_g_runs


def _write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "ssh_config"
    config.write_text(text)
    return config


def test_one_host_star_block_costs_two_ssh_g_runs_for_the_whole_fleet(tmp_path):
    config = _write(tmp_path, "Host *\n  User ops\n  IdentityFile ~/.ssh/fleet_key\n  ConnectTimeout 7\n")
    expected, got, runs = _both(config, FLEET, port=2222)
    assert got == expected
    assert runs == 2


def test_hosts_matching_different_blocks_get_their_own_values(tmp_path):
    config = _write(tmp_path, """
Host 127.1.0.*
  User prefill
  ProxyJump bastion-a
Host 127.1.1.* !127.1.1.7
  User decode
  ServerAliveInterval 15
Host gpu-?? Gpu-*
  Port 2200
Host *
  IdentitiesOnly yes
""")
    expected, got, runs = _both(config, FLEET)
    assert got == expected
    assert got["127.1.0.3"].user == "prefill" and got["127.1.1.3"].user == "decode"
    assert got["127.1.1.7"].user != "decode"  # the negated pattern
    # Groups: 127.1.0.*, 127.1.1.* (less .7), 127.1.1.7, gpu-??, Gpu-* (case-sensitive), login.
    assert runs < len(FLEET) // 2


def test_a_literal_hostname_is_shared_and_an_alias_hostname_is_each_hosts_own(tmp_path):
    config = _write(tmp_path, "Host 127.1.0.*\n  Hostname 10.9.9.9\n  User a\nHost *\n  User b\n")
    expected, got, runs = _both(config, FLEET)
    assert got == expected
    assert {got[h].hostname for h in FLEET if h.startswith("127.1.0.")} == {"10.9.9.9"}
    assert got["Gpu-C3"].hostname == "gpu-c3"  # ssh lower-cases the name it connects to
    assert got["Gpu-C3"].alias == "Gpu-C3"


def test_a_value_that_differs_by_host_sends_the_group_back_to_one_run_per_host(tmp_path):
    # ssh -G expands UserKnownHostsFile's tokens (IdentityFile's only at connect time).
    config = _write(tmp_path, "Host *\n  UserKnownHostsFile ~/.ssh/known_hosts.d/%h\n")
    expected, got, runs = _both(config, FLEET)
    assert got == expected
    assert got["127.1.0.4"].user_known_hosts[0].endswith("/known_hosts.d/127.1.0.4")
    assert runs == len(FLEET)


def test_identity_file_tokens_are_expanded_per_host_when_keys_are_offered(tmp_path, monkeypatch):
    from cluster.ssh import Engine, SSHSettings
    from cluster.testing.fleet import write_keypair

    monkeypatch.setenv("SSH_AUTH_SOCK", "")
    keys = tmp_path / "keys"
    keys.mkdir()
    for host in ("127.1.0.4", "127.1.1.5"):
        write_keypair(keys / f"{host}.key")
    config = _write(tmp_path, f"Host *\n  IdentityFile {keys}/%h.key\n  IdentitiesOnly yes\n")
    engine = Engine(SSHSettings(ssh_config=str(config)))
    for host in ("127.1.0.4", "127.1.1.5"):
        resolved = engine.resolver.resolve(host)
        assert resolved.identity_files == (f"{keys}/%h.key",)  # as ssh -G prints it
        offered = [c.label for c in engine.auth_strategy(resolved).offered]
        assert offered == [f"{keys}/{host}.key"]
    assert engine.resolver.ssh_g_runs == 2


def test_a_host_token_in_a_value_the_library_does_not_use_keeps_the_group(tmp_path):
    config = _write(tmp_path, "Host *\n  ControlPath ~/.ssh/cm-%r@%h:%p\n  User ops\n")
    expected, got, runs = _both(config, FLEET)
    assert got == expected
    assert runs == 2


@pytest.mark.parametrize("text", [
    "Match host 127.1.0.*\n  User m\nHost *\n  User ops\n",
    "Host *\n  CanonicalizeHostname yes\n  CanonicalDomains example.org\n",
    "Host \"127.1.0.*\"\n  User quoted\n",
    "Host 127.1.0.* # a comment ssh may or may not read as patterns\n  User c\n",
])
def test_configs_a_group_cannot_describe_are_resolved_host_by_host(tmp_path, text):
    config = _write(tmp_path, text)
    hosts = FLEET[:6]
    expected, got, runs = _both(config, hosts)
    assert got == expected
    assert runs == len(hosts)


def test_include_files_count_their_host_lines(tmp_path):
    extra = tmp_path / "conf.d"
    extra.mkdir()
    (extra / "10-decode.conf").write_text("Host 127.1.1.*\n  User decode\n")
    config = _write(tmp_path, f"Include {extra}/*.conf\nHost *\n  User ops\n")
    expected, got, runs = _both(config, FLEET)
    assert got == expected
    assert got["127.1.1.2"].user == "decode" and got["127.1.0.2"].user == "ops"
    assert runs <= 6


def test_user_and_port_from_the_command_line_are_part_of_the_group(tmp_path):
    config = _write(tmp_path, "Host *\n  User ops\n  Port 2200\n")
    grouped, alone = Resolver(str(config)), Resolver(str(config), group=False)
    for user, port in [(None, None), ("root", None), (None, 29000), ("root", 29000)]:
        for host in FLEET[:5]:
            assert grouped.resolve(host, user, port) == alone.resolve(host, user, port)
    assert grouped.ssh_g_runs == 4 * 2


def test_threads_resolving_a_fleet_at_once_agree_with_ssh(tmp_path):
    config = _write(tmp_path, "Host 127.1.0.*\n  User a\nHost *\n  User b\n")
    grouped, alone = Resolver(str(config)), Resolver(str(config), group=False)
    got: dict[str, object] = {}
    threads = [threading.Thread(target=lambda h=h: got.__setitem__(h, grouped.resolve(h))) for h in FLEET]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {h: alone.resolve(h) for h in FLEET}
    assert grouped.ssh_g_runs <= 2 * 3  # groups: 127.1.0.*, everything else (two samples each)


# ------------------------------------------------------------------ pure parts
def test_host_lines_match_as_ssh_matches_them(tmp_path):
    config = _write(tmp_path, "Host a* !ab\nhost=b?\nHOST *\n")
    blocks = HostBlocks.read([str(config)])
    assert blocks.groupable
    assert blocks.key("ax") == (True, False, True)
    assert blocks.key("ab") == (False, False, True)
    assert blocks.key("bc") == (False, True, True)
    assert blocks.key("b") == (False, False, True)
    assert blocks.key("A1") == (False, False, True)  # Host patterns are case-sensitive
    assert blocks.key("a.b[1]") == (True, False, True)  # no [] classes in ssh patterns


def test_unreadable_and_relative_includes_under_another_home_are_ungroupable(tmp_path):
    config = _write(tmp_path, "Include conf.d/*.conf\nHost *\n  User x\n")
    assert not HostBlocks.read([str(config)], home_differs=True).groupable
    assert HostBlocks.read([str(config)], home_differs=False).groupable
    (tmp_path / "secret").write_bytes(b"\xff\xfe")
    config.write_text(f"Include {tmp_path}/secret\n")
    assert not HostBlocks.read([str(config)]).groupable


def test_derivation_tells_literal_alias_and_unrelated_hostnames_apart():
    def config(alias: str, hostname: str, key: str = "~/.ssh/k"):
        return host_config(alias, {"hostname": [hostname], "identityfile": [key]})

    assert derivation(config("a1", "10.0.0.1"), config("a2", "10.0.0.1")) == "literal"
    assert derivation(config("A1", "a1"), config("a2", "a2")) == "alias"
    assert derivation(config("a1", "a1.lab"), config("a2", "a2.lab")) == "each"
    assert derivation(config("a1", "a1", "~/.ssh/a1"), config("a2", "a2", "~/.ssh/a2")) == "each"


def test_a_failing_sample_is_replaced_and_the_two_samples_run_side_by_side():
    from cluster.sshconfig import SSHConfigError, _Group

    group, runs, in_flight, most = _Group(), [], [0], [0]
    lock = threading.Lock()
    both_running = threading.Barrier(2, timeout=5)

    def resolve_one(alias: str):
        with lock:
            runs.append(alias)
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            if alias == "bad":
                raise SSHConfigError("ssh_config for bad: refused")
            if len(runs) <= 3:
                both_running.wait()  # the first two good samples meet: they run at the same time
            return host_config(alias, {"hostname": ["10.0.0.9"], "user": ["ops"]})
        finally:
            with lock:
                in_flight[0] -= 1

    with pytest.raises(SSHConfigError):
        group.resolve("bad", resolve_one)
    got: dict[str, object] = {}
    names = [f"gpu{i}" for i in range(12)]
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, group.resolve(n, resolve_one))) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 3 and most[0] == 2  # bad, then two samples together; the rest derived
    assert all(got[n].alias == n and got[n].hostname == "10.0.0.9" for n in names)
