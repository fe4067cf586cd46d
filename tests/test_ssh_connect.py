"""Connecting like ssh, with the OpenSSH client as the oracle.

For each setup one ssh_config file is written; ``ssh -F FILE -o BatchMode=yes
ALIAS true`` decides, and the library (`check`, ``ssh.ssh_config`` = the same
file, nothing else set in the roles settings) must decide the same: connects,
or refuses with the matching kind. The operator side runs with an empty HOME
and no agent (``clean_env``) unless a test starts its own ``ssh-agent``.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_cli, set_gpu_state

from cluster import gpu
from cluster.checks import check, keyscan
from cluster.hosts import Host, parse_hosts
from cluster.inventory import SSHSettings
from cluster.probe import run_probe
from cluster.ssh import Engine
from cluster.testing import Fleet

BASTION, SECOND = "127.0.1.1", "127.0.1.3"


def write_config(tmp_path: Path, fleet, body: str, key: Path | None = None) -> Path:
    """``body`` first (first value wins), then what every host shares."""
    known = tmp_path / "known_hosts"
    known.touch()
    config = tmp_path / "ssh_config"
    config.write_text(body + f"""
Host *
  User {fleet.user}
  Port {fleet.port}
  IdentityFile {key or fleet.key_file}
  IdentitiesOnly yes
  UserKnownHostsFile {known}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking accept-new
  ConnectTimeout 10
""")
    return config


def oracle(config: Path, alias: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", alias, "true"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def library(config: Path, *aliases: str, **settings):
    with Engine(SSHSettings(ssh_config=str(config), **settings)) as engine:
        return check(engine, [Host(a) for a in aliases])


def same_decision(config: Path, alias: str, kind: str | None = None, env: dict | None = None):
    """Both connect (kind None) or both refuse, the library with ``kind``; returns the library's outcome."""
    ssh = oracle(config, alias, env)
    outcome = library(config, alias)[0]
    assert (ssh.returncode == 0) == (kind is None), ssh.stderr
    assert outcome.ok == (kind is None), outcome.error
    if kind:
        assert outcome.error.kind == kind, outcome.error
        assert "Traceback" not in outcome.error.message
    return outcome


def logins(fleet, address: str) -> int:
    return fleet.connection_count(address)


def goodbyes(fleet, address: str) -> int:
    """Sessions that ended with ssh's SSH_MSG_DISCONNECT, in the log of ``address``'s sshd."""
    return fleet.sshd_log(address).count(":11: disconnected by user")


def settled(count, expected: int) -> int:
    """``count()`` once it reaches ``expected`` (sshd logs after the client has gone), else its last value."""
    deadline = time.monotonic() + 10
    while (value := count()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_connections_end_with_a_disconnect_as_ssh_does(fleet, tmp_path, clean_env):
    # ssh ends a session with SSH_MSG_DISCONNECT (11, "disconnected by user"); sshd logs it.
    # paramiko only closes the socket ("Connection closed by"): the engine says goodbye itself,
    # to the target and to each jump host.
    assert fleet.hosts_per_sshd == 1  # one log per address: counts are per host
    target, behind = fleet.addresses[4], fleet.addresses[5]
    config = write_config(tmp_path, fleet, f"Host behind\n  HostName {behind}\n  ProxyJump {BASTION}\n")
    before = goodbyes(fleet, target)
    assert oracle(config, target).returncode == 0
    assert settled(lambda: goodbyes(fleet, target), before + 1) == before + 1  # the oracle's own goodbye
    assert library(config, target)[0].ok
    assert settled(lambda: goodbyes(fleet, target), before + 2) == before + 2
    hop, far = goodbyes(fleet, BASTION), goodbyes(fleet, behind)
    assert library(config, "behind")[0].ok
    assert settled(lambda: goodbyes(fleet, behind), far + 1) == far + 1
    assert settled(lambda: goodbyes(fleet, BASTION), hop + 1) == hop + 1


def test_gcloud_style_alias(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, "Host compute.1234\n  HostName 127.0.1.2\n  HostKeyAlias compute.1234\n")
    outcome = same_decision(config, "compute.1234")
    assert outcome.data.hostname == socket.gethostname()  # uname -n of the host (this machine)
    assert (tmp_path / "known_hosts").read_text().count("compute.1234 ") >= 1


def test_proxy_jump_one_hop_is_one_bastion_login(fleet, tmp_path, clean_env):
    body = "".join(f"Host behind-{n}\n  HostName 127.0.1.{n}\n" for n in range(2, 9))
    config = write_config(tmp_path, fleet, body + f"Host behind-*\n  ProxyJump {BASTION}\n")
    same_decision(config, "behind-2")
    before = logins(fleet, BASTION)
    report = library(config, *[f"behind-{n}" for n in range(2, 9)])
    assert [o.ok for o in report] == [True] * 7, [o.error for o in report]
    assert logins(fleet, BASTION) - before == 1


def test_proxy_jump_two_hops(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, f"Host far\n  HostName 127.0.1.4\n  ProxyJump {BASTION},{SECOND}\n")
    before = logins(fleet, SECOND)
    same_decision(config, "far")
    assert logins(fleet, SECOND) - before == 2  # one login by ssh, one by the library


def test_proxy_jump_none_connects_directly(fleet, tmp_path, clean_env):
    refused = fleet.special["refused"]
    config = write_config(tmp_path, fleet, f"Host direct\n  HostName 127.0.1.5\n  ProxyJump none\n"
                                           f"Host {refused}\n  ProxyJump none\n"
                                           f"Host *\n  ProxyJump {refused}\n")
    same_decision(config, "direct")
    same_decision(config, "127.0.1.6", kind="unreachable")  # through the refused jump host


def test_bastion_rejecting_the_key_is_auth_naming_the_bastion(fleet, tmp_path, clean_env):
    denied = fleet.special["denied"]
    config = write_config(tmp_path, fleet, f"Host inside\n  HostName 127.0.1.2\n  ProxyJump {denied}\n")
    outcome = same_decision(config, "inside", kind="auth")
    assert f"jump host {denied}" in outcome.error.message and "not inside" in outcome.error.hint


def test_failing_hop_is_reported_for_every_target_behind_it(fleet, tmp_path, clean_env):
    refused = fleet.special["refused"]
    config = write_config(tmp_path, fleet, f"Host t*\n  HostName 127.0.1.2\n  ProxyJump {refused}\n")
    report = library(config, "t1", "t2", "t3")
    assert {o.error.kind for o in report} == {"unreachable"}
    assert all(f"jump host {refused}" in o.error.message for o in report)


def test_tarpit_bastion_is_a_timeout_of_the_hop(fleet, tmp_path, clean_env):
    tarpit = fleet.special["tarpit"]
    config = write_config(tmp_path, fleet, f"Host t\n  HostName 127.0.1.2\n  ProxyJump {tarpit}\n"
                                           f"Host {tarpit}\n  ConnectTimeout 1\n")
    outcome = same_decision(config, "t", kind="timeout")
    assert f"jump host {tarpit}" in outcome.error.message


def test_proxy_command_with_tokens(fleet, tmp_path, clean_env):
    seen = tmp_path / "seen"
    config = write_config(tmp_path, fleet, f"""Host pc-alias
  HostName 127.0.1.7
  ProxyCommand sh -c 'echo %n %h %p >> {seen}; exec ssh -F {tmp_path / "ssh_config"} -W %h:%p {BASTION}'
""")
    same_decision(config, "pc-alias")
    assert seen.read_text().splitlines() == [f"pc-alias 127.0.1.7 {fleet.port}"] * 2


def test_failing_proxy_command_shows_its_stderr(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, "Host broken\n  HostName 127.0.1.2\n"
                                           "  ProxyCommand sh -c 'echo proxy-said-no >&2; exit 3'\n")
    outcome = same_decision(config, "broken", kind="unreachable")
    assert "proxy-said-no" in outcome.error.message


def test_connect_timeout_from_ssh_config_against_a_tarpit(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, f"Host slow\n  HostName {fleet.special['tarpit']}\n  ConnectTimeout 1\n")
    outcome = same_decision(config, "slow", kind="timeout")
    assert "within 1 s" in outcome.error.message  # ssh_config's value, not the 10 s default
    with Engine(SSHSettings(ssh_config=str(config), connect_timeout=2)) as engine:  # roles.yaml wins when set
        assert "within 2 s" in check(engine, [Host("slow")])[0].error.message


def test_include_and_match(fleet, tmp_path, clean_env):
    extra = tmp_path / "conf.d"
    extra.mkdir()
    (extra / "gpu.conf").write_text("Host inc-gpu\n  HostName 127.0.1.8\n")
    config = write_config(tmp_path, fleet, f"Include {extra}/*.conf\nMatch host matched\n  HostName 127.0.1.2\n")
    same_decision(config, "inc-gpu")
    same_decision(config, "matched")


def test_several_identity_files_until_one_works(fleet, tmp_path, clean_env):
    for name in ("other1", "other2"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    config = write_config(tmp_path, fleet, f"Host keys\n  HostName 127.0.1.2\n  IdentityFile {tmp_path / 'other1'}\n"
                                           f"  IdentityFile {tmp_path / 'other2'}\n")
    same_decision(config, "keys")


def test_identity_file_tokens_pick_each_hosts_key(fleet, tmp_path, clean_env):
    # `ssh -G` prints IdentityFile's % tokens as written; ssh expands them per host.
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(fleet.key_file, keys / "good.key")
    (keys / "good.key").chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "bad.key")], check=True)
    config = write_config(tmp_path, fleet, f"Host good bad\n  HostName 127.0.1.2\n  IdentityFile {keys}/%n.key\n",
                          key=keys / "bad.key")
    same_decision(config, "good")
    same_decision(config, "bad", kind="auth")


def encrypted_copy(fleet, tmp_path: Path) -> Path:
    key = tmp_path / "enc_key"
    shutil.copy(fleet.key_file, key)
    shutil.copy(str(fleet.key_file) + ".pub", str(key) + ".pub")
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(key)], check=True)
    return key


def test_encrypted_key_without_agent_is_auth_with_ssh_add_hint(fleet, tmp_path, clean_env):
    key = encrypted_copy(fleet, tmp_path)
    config = write_config(tmp_path, fleet, "Host enc\n  HostName 127.0.1.2\n", key=key)
    outcome = same_decision(config, "enc", kind="auth")
    assert "encrypted, not in agent" in outcome.error.message and f"ssh-add {key}" in outcome.error.hint


def test_agent_holding_the_encrypted_key(fleet, tmp_path, clean_env, monkeypatch):
    key = encrypted_copy(fleet, tmp_path)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        env = {"SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(fleet.key_file)], env={**os.environ, **env}, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        config = write_config(tmp_path, fleet, "Host agent\n  HostName 127.0.1.2\n", key=key)
        same_decision(config, "agent", env=env)
    finally:
        agent.terminate()
        agent.wait()


@pytest.fixture(scope="module")
def stock_bastion(fleet_dir):
    """A bastion with sshd's stock MaxStartups (10:30:100): logins beyond 10 at once get dropped."""
    with Fleet(fleet_dir("bastion"), count=1, base="127.0.126.", specials=False,
               sshd_options=["MaxStartups 10:30:100"]) as bastion:
        yield bastion


def test_forty_hosts_behind_one_stock_bastion_is_one_login(fleet, stock_bastion, tmp_path, clean_env):
    gate = stock_bastion.addresses[0]
    body = "".join(f"Host n{i}\n  HostName 127.0.1.{2 + i % 7}\n" for i in range(40))
    config = write_config(tmp_path, fleet, body + f"Host n*\n  ProxyJump {gate}\n"
                                                  f"Host {gate}\n  Port {stock_bastion.port}\n"
                                                  f"  IdentityFile {stock_bastion.key_file}\n")
    same_decision(config, "n0")
    before = logins(stock_bastion, gate)
    report = library(config, *[f"n{i}" for i in range(40)])  # default fanout: 64
    assert sum(o.ok for o in report) == 40, [o.error for o in report if not o.ok][:3]
    assert logins(stock_bastion, gate) - before == 1


def test_roles_proxy_jump_overrides_ssh_config(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, f"Host rj\n  HostName 127.0.1.2\n  ProxyJump {fleet.special['refused']}\n")
    before = logins(fleet, BASTION)
    report = library(config, "rj", proxy_jump=BASTION)
    assert report[0].ok, report[0].error
    assert logins(fleet, BASTION) - before == 1
    assert library(config, "rj", proxy_jump="none")[0].ok  # direct


# ---------------------------------------------------------------------------
# A login shell that prints banners: ~/.bashrc (bash reads it under sshd even for `bash -c`),
# in a home of its own (SetEnv HOME) so the shared test user's home stays clean
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_fleet(fleet_dir):
    workdir = fleet_dir("noisy")
    home = workdir / "noisy-home"
    home.mkdir()
    home.chmod(0o755)
    bashrc = home / ".bashrc"
    bashrc.write_text("echo 'Welcome to gpu-node (managed by ops)'\ntrap 'echo logout-banner' EXIT\n")
    bashrc.chmod(0o644)
    with Fleet(workdir, count=1, base="127.0.122.", specials=False, session_env={"HOME": str(home)}) as noisy:
        set_gpu_state(noisy, noisy.addresses[0], "h100-idle")
        yield noisy


def test_noisy_shell_keeps_probes_and_check_clean_and_run_untouched(noisy_fleet, tmp_path, clean_env):
    address = noisy_fleet.addresses[0]
    settings = SSHSettings(**{**noisy_fleet.ssh_settings(), "known_hosts": str(tmp_path / "kh")})
    with Engine(settings) as engine:
        host = Host(address)
        assert check(engine, [host])[0].data.hostname == socket.gethostname()
        outcome = run_probe(engine, [host], gpu.probe())[0]
        assert outcome.ok, outcome.error
        assert len(outcome.data.gpus) == 8 and "Welcome" not in outcome.stdout
        ran = engine.run([host], "echo payload")
        stdout = next(iter(ran.values())).stdout
    ssh = subprocess.run([*noisy_fleet.ssh_command(address), "echo payload"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert stdout == ssh.stdout and "Welcome to gpu-node" in stdout and "logout-banner" in stdout


def start_agent(tmp_path: Path, *keys: Path) -> tuple[subprocess.Popen, Path]:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        if sock.exists():
            break
        subprocess.run(["sleep", "0.05"])
    for key in keys:
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True)
    return agent, sock


def test_forward_agent_on_the_engines_channels(fleet, tmp_path, clean_env, monkeypatch):
    agent, sock = start_agent(tmp_path, fleet.key_file)
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        config = write_config(tmp_path, fleet, "Host fwd\n  HostName 127.0.1.2\n  ForwardAgent yes\n"
                                               "Host nofwd\n  HostName 127.0.1.2\n")
        listing = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "fwd", "ssh-add -l"],
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert listing.returncode == 0 and "ED25519" in listing.stdout, listing
        with Engine(SSHSettings(ssh_config=str(config))) as engine:
            results = {s.host.hostname: r for s, r in engine.run([Host("fwd"), Host("nofwd")], "ssh-add -l").items()}
        assert results["fwd"].exited == 0 and results["fwd"].stdout == listing.stdout
        assert results["nofwd"].exited == 2  # no agent there: as with ssh without -A
    finally:
        agent.terminate()
        agent.wait()


def test_server_alive_detects_a_silent_peer(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, "Host quiet\n  HostName 127.0.1.6\n  ServerAliveInterval 1\n"
                                           "  ServerAliveCountMax 2\n")
    with Engine(SSHSettings(ssh_config=str(config))) as engine:
        session = engine.session(Host("quiet"))
        assert session.run("true").exited == 0  # sshd's per-user child exists from here on
        frozen = fleet.session_pids("127.0.1.6")
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # the peer stops answering, the TCP connection stays up
        try:
            failure = engine.run([Host("quiet")], "sleep 1", timeout=60, keep_open=True)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
    value = next(iter(failure.values()))
    # Closed by the keepalive after 2 unanswered probes, while waiting for the channel (without
    # keepalives: "Timeout opening channel." after the 10 s connect timeout).
    assert isinstance(value, Exception) and str(value) in ("Unable to open channel.", "SSH session not active")
    assert not session.connection.client.get_transport().is_active()


# ---------------------------------------------------------------------------
# IPv6 host forms against an sshd on ::1
# ---------------------------------------------------------------------------


def _port_free_on(*addresses: str) -> int:
    for port in random.sample(range(20000, 32000), 50):
        try:
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                with socket.socket(family) as probe:
                    probe.bind((address, port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port")


@pytest.fixture(scope="module")
def v6_fleet(fleet_dir):
    port = _port_free_on("127.0.128.1", "::1")
    with Fleet(fleet_dir("v6"), count=1, base="127.0.128.", port=port, specials=False,
               sshd_options=[f"ListenAddress [::1]:{port}"]) as v6:
        yield v6


@pytest.mark.parametrize("form", ["[::1]:{port}", "{user}@[::1]:{port}", "[::1]", "::1"])
def test_ipv6_host_forms_connect_like_ssh(v6_fleet, tmp_path, clean_env, form):
    expression = form.format(port=v6_fleet.port, user=v6_fleet.user)
    hosts = parse_hosts(expression)
    assert [h.hostname for h in hosts] == ["::1"]
    settings = SSHSettings(**{**v6_fleet.ssh_settings(), "known_hosts": str(tmp_path / "kh")})
    with Engine(settings) as engine:
        outcome = check(engine, hosts)[0]
    ssh = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                          "-o", f"UserKnownHostsFile={tmp_path / 'kh-ssh'}", "-i", str(v6_fleet.key_file),
                          "-p", str(v6_fleet.port), "-l", v6_fleet.user, "::1", "true"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert ssh.returncode == 0, ssh.stderr
    assert outcome.ok, outcome.error
    assert outcome.data.hostname == socket.gethostname()


# ---------------------------------------------------------------------------
# CertificateFile: a user certificate signed by a CA the sshd trusts
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_fleet(fleet_dir):
    workdir = fleet_dir("userca")
    ca = workdir / "user_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    (workdir / "user_ca.pub").chmod(0o644)
    with Fleet(workdir, count=1, base="127.0.129.", specials=False,
               sshd_options=[f"TrustedUserCAKeys {ca}.pub"]) as certified:
        yield certified, ca


def test_certificate_file_at_another_path(ca_fleet, tmp_path, clean_env):
    certified, ca = ca_fleet
    key = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cert = tmp_path / "elsewhere" / "my-cert.pub"
    cert.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "me", "-n", certified.user, str(key) + ".pub"], check=True)
    (tmp_path / "not_authorized-cert.pub").rename(cert)
    address = certified.addresses[0]
    body = f"Host withcert\n  HostName {address}\n  CertificateFile {cert}\nHost nocert\n  HostName {address}\n"
    config = write_config(tmp_path, certified, body, key=key)
    same_decision(config, "withcert")
    same_decision(config, "nocert", kind="auth")  # the plain key is in no authorized_keys


# ---------------------------------------------------------------------------
# Default key files (~/.ssh/id_*): ssh reads them from the passwd home, so the
# oracle runs in a mount namespace where that home is the test's HOME
# ---------------------------------------------------------------------------


def oracle_in_home(home: Path, config: Path, alias: str) -> subprocess.CompletedProcess:
    passwd_home = pwd.getpwuid(os.getuid()).pw_dir
    script = f'mount --bind "$1" "{passwd_home}" && exec ssh -F "$2" -o BatchMode=yes "$3" true'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(home), str(config), alias],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_several_default_keys_in_openssh_order(fleet, tmp_path, clean_env):
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs root and mount namespaces for the oracle's home")
    ssh_dir = clean_env / ".ssh"
    for name, passphrase in (("id_rsa", ""), ("id_ecdsa", "secret")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(ssh_dir / name)], check=True)
    shutil.copy(fleet.key_file, ssh_dir / "id_ed25519")
    (ssh_dir / "id_ed25519").chmod(0o600)
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host dflt\n  HostName 127.0.1.3\n  User {fleet.user}\n  Port {fleet.port}\n"
                      f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking accept-new\n")
    assert oracle_in_home(clean_env, config, "dflt").returncode == 0
    assert library(config, "dflt")[0].ok
    (ssh_dir / "id_ed25519").unlink()
    refused = oracle_in_home(clean_env, config, "dflt")
    outcome = library(config, "dflt")[0]
    assert refused.returncode != 0 and outcome.error.kind == "auth"
    assert f"{ssh_dir / 'id_rsa'}; {ssh_dir / 'id_ecdsa'} (encrypted, not in agent)" in outcome.error.message


def test_cli_reports_every_first_contact_failure_without_a_traceback(fleet, tmp_path, clean_env):
    key = encrypted_copy(fleet, tmp_path)
    body = ("Host enc\n  HostName 127.0.1.2\n"
            f"Host viadenied\n  HostName 127.0.1.2\n  ProxyJump {fleet.special['denied']}\n"
            "Host badproxy\n  HostName 127.0.1.2\n  ProxyCommand sh -c 'echo nope >&2; exit 1'\n"
            f"Host good\n  HostName 127.0.1.2\n  IdentityFile {fleet.key_file}\n")
    config = write_config(tmp_path, fleet, body, key=key)  # every host: the encrypted key only
    roles = tmp_path / "roles.yaml"
    roles.write_text(f"ssh:\n  ssh_config: {config}\nroles:\n  all: enc,viadenied,badproxy,good\n")
    for task in (["check"], ["run", "true"]):
        code, out, err = run_cli(*task, "--roles-file", str(roles), "--json", env={"HOME": str(clean_env)})
        assert code == 1 and "Traceback" not in out + err, err
        kinds = {h["host"]: (h["error"] or {}).get("kind") for h in json.loads(out)["hosts"]}
        assert kinds == {"enc": "auth", "viadenied": "auth", "badproxy": "unreachable", "good": None}


def test_keyscan_behind_a_bastion_records_the_target_key(fleet, tmp_path, clean_env):
    config = write_config(tmp_path, fleet, f"Host scanned\n  HostName 127.0.1.5\n  ProxyJump {BASTION}\n")
    with Engine(SSHSettings(ssh_config=str(config))) as engine:
        report = keyscan(engine, [Host("scanned")])
    assert report[0].ok, report[0].error
    recorded = (tmp_path / "known_hosts").read_text()
    assert fleet.host_key_line("127.0.1.5").split(" ", 1)[1].strip() in recorded
    same_decision(config, "scanned")  # ssh accepts what keyscan recorded (and records nothing new)
