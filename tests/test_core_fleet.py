"""The core against real sshd processes on loopback: run, check, keyscan, failure kinds,
fan-out bound, host-key recording, quoting, local, ssh_config and bad input."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.api import Cluster
from cluster.hostkeys import load_tolerant
from cluster.inventory import load_inventory
from cluster.testing import Fleet

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run the task CLI in a subprocess; return (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or REPO,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str, **kwargs):
    code, out, err = cli(*args, "--json", **kwargs)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


def roles_with(fleet: Fleet, tmp_path: Path, name: str = "roles.yaml", **ssh) -> Path:
    """A roles file for the session fleet with its own known_hosts (a fresh trust store)."""
    ssh.setdefault("known_hosts", str(tmp_path / "known_hosts"))
    return fleet.write_roles(tmp_path / name, {"all": fleet.addresses}, extra={"ssh": ssh})


@pytest.fixture(scope="module")
def big_fleet(fleet_dir):
    """64 hosts served by 4 sshd processes (16 addresses each), no special hosts."""
    with Fleet(fleet_dir("fleet64"), count=64, base="127.0.4.", specials=False,
               hosts_per_sshd=16) as running:
        yield running


def test_run_echo_on_eight_hosts_in_order(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path)
    code, doc = cli_json("run", "echo hi", "-H", "127.0.1.[1-8]", "--roles-file", str(roles))
    assert code == 0
    assert doc["task"] == "run" and doc["summary"] == {"ok": 8, "failed": 0}
    assert [h["host"] for h in doc["hosts"]] == [f"127.0.1.{i}" for i in range(1, 9)]
    assert all(h["ok"] and h["stdout"] == "hi\n" and h["error"] is None for h in doc["hosts"])


def test_hosts_reverse_order_is_kept(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path)
    code, doc = cli_json("run", "echo $CLUSTER_SIM_HOST", "-H", "127.0.1.3 127.0.1.1,127.0.1.2",
                         "--roles-file", str(roles))
    assert code == 0
    assert [h["stdout"].strip() for h in doc["hosts"]] == ["127.0.1.3", "127.0.1.1", "127.0.1.2"]


def test_special_hosts_fail_with_their_kinds_and_others_are_unaffected(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path, known_hosts=str(fleet.known_hosts), connect_timeout=3)
    hosts = " ".join(["127.0.1.1", *fleet.special.values(), "127.0.1.2"])
    started = time.monotonic()
    code, doc = cli_json("run", "echo ok", "-H", hosts, "--roles-file", str(roles))
    elapsed = time.monotonic() - started
    kinds = {h["host"]: (h["error"] or {}).get("kind") for h in doc["hosts"]}
    assert code == 1
    assert kinds == {"127.0.1.1": None, fleet.special["refused"]: "unreachable",
                     fleet.special["tarpit"]: "timeout", fleet.special["badkey"]: "host-key",
                     fleet.special["denied"]: "auth", "127.0.1.2": None}
    assert [h["stdout"] for h in doc["hosts"] if h["ok"]] == ["ok\n", "ok\n"]
    assert all(h["error"]["hint"] for h in doc["hosts"] if not h["ok"])
    # The tarpit is bounded by the 3 s connect timeout (hosts run in parallel).
    assert elapsed < 3 + 10, f"took {elapsed:.1f} s"


def test_table_output_shows_failures_and_summary(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path, connect_timeout=3)
    code, out, err = cli("run", "echo hi", "-H", f"127.0.1.[1-4] {fleet.special['refused']}",
                         "--roles-file", str(roles))
    assert code == 1
    assert out == "hi\n" * 4  # piped: the hosts' output only; the rest on stderr
    assert "unreachable" in err and "is sshd running" in err
    assert "5 hosts: 4 ok, 1 failed (1 unreachable)" in err


def test_nonzero_exit_and_command_timeout(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path)
    code, doc = cli_json("run", "sleep 5; echo late", "-H", "127.0.1.1", "--roles-file", str(roles),
                         "--timeout", "1")
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "command-timeout"
    code, doc = cli_json("run", "echo out; echo bad >&2; exit 3", "-H", "127.0.1.2",
                         "--roles-file", str(roles))
    error = doc["hosts"][0]["error"]
    assert code == 1 and (error["kind"], error["exit_code"]) == ("exit", 3)
    assert doc["hosts"][0]["stdout"] == "out\n" and "bad" in error["message"]


def test_value_with_spaces_quotes_and_substitution_reaches_remote_literally(fleet, tmp_path):
    value = """it's a "test" $(touch /tmp/pwned-by-quoting) `id` ; & | *"""
    cluster = Cluster(load_inventory(roles_with(fleet, tmp_path)))
    with cluster:
        report = cluster.run(f"printf %s {shlex.quote(value)}", hosts="127.0.1.1")
    assert report[0].ok and report[0].stdout == value
    assert not Path("/tmp/pwned-by-quoting").exists()


def test_python_api_iterates_in_host_order(fleet, tmp_path):
    roles = fleet.write_roles(tmp_path / "r.yaml", {"prefill": "127.0.1.1", "decode": "127.0.1.[2-3]"},
                              extra={"ssh": {"known_hosts": str(tmp_path / "kh")}})
    with Cluster.from_roles(roles) as cluster:
        report = cluster.run("echo $CLUSTER_SIM_HOST", role="decode")
    assert [o.stdout.strip() for o in report] == ["127.0.1.2", "127.0.1.3"], [o.error for o in report]
    assert len(report.ok) == 2 and not report.failed


def test_check_reports_remote_hostname_and_latency(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path)
    code, doc = cli_json("check", "-H", "127.0.1.[1-2] local", "--roles-file", str(roles))
    assert code == 0
    remote, local = doc["hosts"][1], doc["hosts"][2]
    assert remote["remote_hostname"] == os.uname().nodename and remote["connect_ms"] > 0
    assert local["host"] == "local" and local["connect_ms"] is None


def test_keyscan_records_new_keys_then_reports_them_known(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path)
    code, doc = cli_json("keyscan", "-H", "127.0.1.[1-3]", "--roles-file", str(roles))
    assert code == 0 and [h["status"] for h in doc["hosts"]] == ["added"] * 3
    assert all(h["fingerprint"].startswith("SHA256:") for h in doc["hosts"])
    expected = {fleet.host_key_line(a).split()[2] for a in ("127.0.1.1", "127.0.1.2", "127.0.1.3")}
    recorded = {line.split()[2] for line in (tmp_path / "known_hosts").read_text().splitlines()}
    assert recorded == expected
    code, doc = cli_json("keyscan", "-H", "127.0.1.[1-3]", "--roles-file", str(roles))
    assert code == 0 and [h["status"] for h in doc["hosts"]] == ["known"] * 3


def test_keyscan_flags_a_changed_key_and_strict_refuses_unknown(fleet, tmp_path):
    roles = roles_with(fleet, tmp_path, known_hosts=str(fleet.known_hosts))
    code, doc = cli_json("keyscan", "-H", fleet.special["badkey"], "--roles-file", str(roles))
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "host-key"
    assert "ssh-keygen -R" in doc["hosts"][0]["error"]["hint"]
    strict = roles_with(fleet, tmp_path, name="strict.yaml", host_key_policy="strict")
    code, doc = cli_json("keyscan", "-H", "127.0.1.4", "--roles-file", str(strict))
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "host-key"
    assert not (tmp_path / "known_hosts").exists()


def test_strict_policy_refuses_unknown_host_on_run(fleet, tmp_path):
    strict = roles_with(fleet, tmp_path, host_key_policy="strict")
    code, doc = cli_json("run", "true", "-H", "127.0.1.5", "--roles-file", str(strict))
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "host-key"


def test_sixty_four_new_hosts_at_once_are_all_recorded(big_fleet, tmp_path):
    known = tmp_path / "known_hosts"
    existing = "# keep me\n|1|abc=|def= ssh-ed25519 bm90LWEta2V5\n@revoked * ssh-ed25519 AAAAx\n"
    known.write_text(existing)
    roles = big_fleet.write_roles(tmp_path / "r.yaml", {"all": big_fleet.addresses},
                                  extra={"ssh": {"known_hosts": str(known), "fanout": 64}})
    code, doc = cli_json("run", "true", "--roles-file", str(roles))
    assert code == 0 and doc["summary"]["ok"] == 64
    text = known.read_text()
    assert text.startswith(existing)
    added = text[len(existing):].splitlines()
    assert len(added) == 64
    keys = load_tolerant(known)
    for address in big_fleet.addresses:
        assert keys.lookup(address) or keys.lookup(f"[{address}]:{big_fleet.port}")


def _timed_run(cluster: Cluster, hosts: list[str], fanout: int) -> tuple[float, int]:
    """Run `sleep 1` everywhere; return wall time and the peak thread count seen."""
    peak = [threading.active_count()]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], threading.active_count())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    cluster.settings = cluster.settings.with_overrides(fanout=fanout)
    cluster._engine = None
    started = time.monotonic()
    try:
        report = cluster.run("sleep 1", hosts=hosts)
    finally:
        done.set()
        watcher.join()
    assert report.all_ok, [o.error for o in report.failed]
    return time.monotonic() - started, peak[0]


def test_fanout_bounds_hosts_in_flight_and_threads(big_fleet, tmp_path):
    roles = big_fleet.write_roles(tmp_path / "r.yaml", {"all": big_fleet.addresses},
                                  extra={"ssh": {"known_hosts": str(tmp_path / "kh")}})
    hosts = big_fleet.addresses[:16]
    with Cluster.from_roles(roles) as cluster:
        baseline = threading.active_count()
        slow, slow_peak = _timed_run(cluster, hosts, fanout=4)
        fast, fast_peak = _timed_run(cluster, hosts, fanout=16)
    # 16 one-second commands, 4 at a time: at least 4 rounds.
    assert slow >= 4.0, f"fanout 4 took {slow:.2f} s"
    assert fast < slow and fast < 4.0, f"fanout 16 took {fast:.2f} s"
    # Per host in flight: one pool worker + one paramiko transport thread (+ the
    # watcher and a timer).
    assert slow_peak - baseline <= 2 * 4 + 3, (baseline, slow_peak)
    assert fast_peak - baseline <= 2 * 16 + 3, (baseline, fast_peak)


def test_local_works_without_sshd_or_roles_file(tmp_path, clean_env):
    code, doc = cli_json("run", "echo $((6*7))", "-H", "local", cwd=tmp_path)
    assert code == 0 and doc["hosts"] == [
        {"host": "local", "ok": True, "error": None, "exit_code": 0, "stdout": "42\n",
         "stderr": "", "elapsed_s": doc["hosts"][0]["elapsed_s"]}]


def test_ssh_config_alias_user_and_port_are_honoured(fleet, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu-alias\n  HostName 127.0.1.6\n  User {fleet.user}\n"
                      f"  Port {fleet.port}\n")
    roles = tmp_path / "roles.yaml"
    roles.write_text(f"ssh:\n  key_filename: {fleet.key_file}\n  known_hosts: {tmp_path / 'kh'}\n"
                     f"  ssh_config: {config}\nroles: {{}}\n")
    code, doc = cli_json("run", "echo $CLUSTER_SIM_HOST $(id -un)", "-H", "gpu-alias",
                         "--roles-file", str(roles))
    assert code == 0 and doc["hosts"][0]["stdout"] == f"127.0.1.6 {fleet.user}\n"


@pytest.mark.parametrize("args, message", [
    (["-H", "127.0.1.[1-"], "bad range"),
    (["-r", "nosuchrole"], "unknown role 'nosuchrole'"),
    (["-H", "@/nonexistent/hosts.txt"], "host file not found"),
    (["--fanout", "0"], "fanout must be >= 1"),
])
def test_bad_input_exits_2_before_any_connection(fleet, tmp_path, args, message):
    roles = roles_with(fleet, tmp_path)
    before = fleet.connection_count("127.0.1.1")
    code, out, err = cli("run", "true", "--roles-file", str(roles), *args)
    assert code == 2 and message in err, err
    assert fleet.connection_count("127.0.1.1") == before


def test_bad_roles_yaml_exits_2(tmp_path):
    bad = tmp_path / "roles.yaml"
    bad.write_text("ssh: [unclosed\n")
    code, _, err = cli("hosts", "--roles-file", str(bad))
    assert code == 2 and str(bad) in err and "invalid YAML" in err


def _fake_gcloud(bin_dir: Path, home: Path) -> None:
    script = bin_dir / "gcloud"
    script.write_text("#!/bin/sh\n"
                      f"echo \"$@\" > {home}/gcloud-args\n"
                      f"ssh-keygen -q -t ed25519 -N '' -f {home}/.ssh/google_compute_engine\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_ensure_key_runs_gcloud_when_the_key_is_missing(tmp_path, clean_env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_gcloud(bin_dir, clean_env)
    env = {"HOME": str(clean_env), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, out, _ = cli("ensure-key", env=env, cwd=tmp_path)
    assert code == 0, out
    assert (clean_env / "gcloud-args").read_text().strip() == "compute config-ssh --quiet"
    assert "google_compute_engine" in out and "SHA256:" in out


def test_ensure_key_without_gcloud_prints_steps_and_exits_1(tmp_path, clean_env):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    # Only an empty dir on PATH: a real gcloud on the machine must never run in tests.
    env = {"HOME": str(clean_env), "PATH": str(empty)}
    code, out, _ = cli("ensure-key", env=env, cwd=tmp_path)
    assert code == 1
    assert "gcloud compute config-ssh --quiet" in out and "ssh-keygen" in out
