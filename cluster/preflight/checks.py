"""The preflight checks: pure parsers of each probe section's output and the judges that
turn them into ``ok`` / ``warn`` / ``fail`` with the observed value and a one-line hint.

Formats (captured fixtures in tests/fixtures/preflight/):

* ``gpu``: :data:`cluster.gpu.COMMAND` output, parsed and classified by :mod:`cluster.gpu`
  (the gpu-status kinds and health warnings, :mod:`cluster.gpu_health`).
* ``env``: tagged lines (:func:`cluster.preflight.probe.env_script`, where each value is
  read and which format it comes from): ``driver`` from /proc/driver/nvidia/version,
  ``pcie BUS GEN GEN_MAX WIDTH WIDTH_MAX`` from sysfs PCI link attributes, ``nic`` from
  sysfs operstate (``up``, ``down``, ``unknown``), ``addr`` from ``ip -o addr``, ``ib DEV
  PORT STATE`` from sysfs (``4: ACTIVE``, ``1: DOWN``), ``shm`` / ``disk`` from statvfs
  (KiB), ``memlock`` from getrlimit (KiB or ``unlimited``), ``load`` (1-minute, CPUs),
  ``clock`` (epoch seconds), the model manifest, the versions and the peers; ``xidsource
  kmsg|journalctl|none`` and ``xid LINE`` for kernel log lines ``NVRM: Xid (PCI:0000:3b:00):
  79, pid=..., GPU has fallen off the bus.`` (NVIDIA's "Xid Errors" document); ``PORT
  free|busy`` (LISTEN sockets in /proc/net/tcp{,6}, :func:`cluster.serving.scripts.listen_keys`).

Every parser takes text and never raises: unexpected output becomes a ``fail`` or ``warn``
naming what was seen.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import gpu as gpu_probe
from .. import gpu_health
from ..render.core import counted
from ..shell import MASK, SECRET_NAME_PARTS, Section

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

# Check names (stable: JSON, docs/preflight.md, --json consumers).
GPU_COUNT, GPU_HEALTH, GPU_ECC, GPU_FREE, GPU_MODEL = "gpu.count", "gpu.health", "gpu.ecc", "gpu.free", "gpu.model"
GPU_DRIVER, GPU_XID, GPU_PCIE = "gpu.driver", "gpu.xid", "gpu.pcie"
PYTHON, ENGINE, LAUNCHER, TORCH, CUDA, ENV_FILE = "sw.python", "sw.engine", "sw.launcher", "sw.torch", "sw.cuda", "env.file"
MODEL, MODEL_MANIFEST = "model.present", "model.manifest"
NIC, IB, PEERS, PORTS = "net.nic", "net.ib", "net.peers", "net.ports"
SHM, MEMLOCK, DISK, CLOCK, LOAD = "sys.shm", "sys.memlock", "sys.disk", "sys.clock", "sys.load"
# start-pd runs these (and nothing else) before launching anything.
FAST_CHECKS = (GPU_FREE, PORTS, ENV_FILE, ENGINE, LAUNCHER, MODEL)

# Thresholds (docs/preflight.md).
GPU_MEMORY_HELD_MIB = 1024          # used memory above this on a GPU = held by something
SHM_FAIL_KIB = 1 << 20              # /dev/shm below 1 GiB: NCCL / engine IPC fails
SHM_WARN_KIB = 8 << 20              # below 8 GiB: warn
DISK_FAIL_KIB = 1 << 20             # run/log dir: under 1 GiB free
DISK_WARN_KIB = 10 << 20            # under 10 GiB free
CLOCK_WARN_S = 1.0
CLOCK_FAIL_S = 10.0
LOAD_WARN_PER_CPU = 1.0
# Health warnings that mean the GPU needs a reset/reboot before it can be trusted.
_ECC_KINDS = {gpu_health.ECC, gpu_health.REMAPPED_ROWS, gpu_health.RETIRED_PAGES,
              gpu_health.RECOVERY_ACTION}


@dataclass(frozen=True)
class Check:
    """One judged check on one host: ``ok`` / ``warn`` / ``fail``, what was seen, a hint."""

    name: str
    status: str
    value: str
    hint: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "value": self.value, "hint": self.hint}


def ok(name: str, value: str) -> Check:
    return Check(name, OK, value)


def warn(name: str, value: str, hint: str) -> Check:
    return Check(name, WARN, value, hint)


def fail(name: str, value: str, hint: str) -> Check:
    return Check(name, FAIL, value, hint)


@dataclass
class HostResult:
    """Every check of one host, and the facts that must match across hosts."""

    roles: tuple[str, ...] = ()
    checks: list[Check] = field(default_factory=list)
    # Consistency facts: engine, driver, cuda, torch, model manifest, gpu model.
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst(c.status for c in self.checks)

    def by_status(self, status: str) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    def to_json(self) -> dict[str, Any]:
        return {"roles": list(self.roles), "status": self.status,
                "checks": [c.to_json() for c in self.checks], "facts": dict(self.facts)}


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.__getitem__, default=OK)


def _lines(section: Section | None) -> list[str]:
    return section.lines if section is not None else []


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"


# --------------------------------------------------------------------------- GPUs


def judge_gpus(section: Section | None, needed: int) -> tuple[list[Check], gpu_probe.GpuStatus | None]:
    """gpu.count, gpu.health, gpu.ecc, gpu.free from :data:`cluster.gpu.COMMAND` output."""
    if section is None or section.rc is None:
        return [fail(GPU_FREE, "nvidia-smi did not finish", "run nvidia-smi on the host (wedged GPU?)")], None
    status = gpu_probe.parse(section.output)
    failure = gpu_probe.classify(section.rc, section.output, "", status)
    checks: list[Check] = []
    if failure is not None and not status.gpus:
        return [fail(GPU_COUNT, f"{failure.kind}: {failure.message}", failure.hint),
                fail(GPU_FREE, "no GPU could be read", failure.hint)], status
    count = len(status.gpus)
    if count < needed:
        checks.append(fail(GPU_COUNT, f"{counted(count, 'GPU')}, the plan needs {needed}",
                           "give this host fewer ranks (--tp-size / --nnodes) or fix the missing GPUs"))
    else:
        checks.append(ok(GPU_COUNT, f"{counted(count, 'GPU')} (needs {needed})"))
    checks.append(fail(GPU_HEALTH, failure.message, failure.hint) if failure is not None
                  else _health(status))
    checks.append(_ecc(status))
    checks.append(judge_free(status))
    return checks, status


def _health(status: gpu_probe.GpuStatus) -> Check:
    other = [w for w in status.warnings if w.kind not in _ECC_KINDS]
    if other:
        return warn(GPU_HEALTH, "; ".join(w.describe() for w in other[:4]),
                    "see `inv gpu-status --gpus` on this host (cooling, power, infoROM)")
    return ok(GPU_HEALTH, f"{len(status.gpus)} healthy")


def _ecc(status: gpu_probe.GpuStatus) -> Check:
    bad = [w for w in status.warnings if w.kind in _ECC_KINDS]
    if bad:
        return fail(GPU_ECC, "; ".join(w.describe() for w in bad[:4]),
                    "reset the GPU (nvidia-smi -r) or reboot; replace it if errors persist")
    return ok(GPU_ECC, "no uncorrectable ECC, nothing pending")


def judge_free(status: gpu_probe.GpuStatus) -> Check:
    """gpu.free: no compute process, and no GPU holding memory (another container's process)."""
    held = []
    for proc in status.processes:
        where = f"GPU {proc.gpu_index}" if proc.gpu_index is not None else "a GPU"
        size = f" {_gib(proc.used_memory_mib)}" if proc.used_memory_mib is not None else ""
        held.append(f"{where}:{size} {proc.name} pid {proc.pid}")
    busy = {p.gpu_index for p in status.processes}
    for g in status.gpus:
        if g.index not in busy and (g.memory_used_mib or 0) > GPU_MEMORY_HELD_MIB:
            held.append(f"GPU {g.index}: {_gib(g.memory_used_mib or 0)} used, no process visible")
    if held:
        more = f" (+{len(held) - 3} more)" if len(held) > 3 else ""
        return fail(GPU_FREE, "; ".join(held[:3]) + more,
                    "stop it (inv stop-pd, or inv kill PATTERN) — a leftover sglang::scheduler "
                    "holds its memory until killed")
    return ok(GPU_FREE, f"{counted(len(status.gpus), 'GPU')} free")


@dataclass(frozen=True)
class GpuLink:
    """One NVIDIA PCI device's link (``pcie`` line); None where sysfs had no value."""

    bus: str
    gen: int | None
    gen_max: int | None
    width: int | None
    width_max: int | None


def parse_gpu_info(text: str) -> tuple[str | None, list[GpuLink]]:
    """``(driver version, links)`` from the ``driver`` and ``pcie`` lines; odd lines skipped."""
    driver, links = None, []
    for tag, _rest, words in tagged(text):
        if tag == "driver" and words and words[0] != "-":
            driver = words[0]
        elif tag == "pcie" and len(words) == 5:
            nums = [int(w) if w.isdigit() else None for w in words[1:]]
            links.append(GpuLink(words[0], *nums))
    return driver, links


def judge_gpu_info(text: str, result: HostResult) -> None:
    """gpu.driver (the driver fact) and gpu.pcie: a link narrower than its maximum is a
    warning; the link generation drops at idle and is not judged."""
    driver, links = parse_gpu_info(text)
    if driver is None:
        result.checks.append(warn(GPU_DRIVER, "driver version not readable (/proc/driver/nvidia/version)",
                                  "is the NVIDIA kernel module loaded?"))
    else:
        result.facts["driver"] = driver
        result.checks.append(ok(GPU_DRIVER, f"driver {driver}"))
    if not links:
        result.checks.append(warn(GPU_PCIE, "no NVIDIA PCI device in sysfs", "check lspci -d 10de:"))
        return
    narrow = [r for r in links if r.width is not None and r.width_max and r.width < r.width_max]
    if narrow:
        result.checks.append(warn(GPU_PCIE, ", ".join(f"{r.bus} x{r.width} of x{r.width_max}"
                                                       for r in narrow[:4]),
                                  "reseat the GPU / riser or check the BIOS PCIe settings"))
    else:
        gens = sorted({r.gen_max for r in links if r.gen_max})
        generations = "/".join(map(str, gens)) or "?"
        result.checks.append(ok(GPU_PCIE, f"{counted(len(links), 'link')} at full width, gen {generations} max"))


_XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")


def parse_xid(text: str) -> tuple[str, list[tuple[str, int]]]:
    """``(source, [(pci, xid code), ...])`` from the ``xidsource`` / ``xid`` lines (source
    ``none`` when the kernel log could not be read; the last source line wins)."""
    source, found = "none", []
    for line in text.splitlines():
        if line.startswith("xidsource "):
            source = line.split()[1] if len(line.split()) > 1 else "none"
            continue
        match = _XID.search(line)
        if match:
            found.append((match.group(1), int(match.group(2))))
    return source, found


def judge_xid(text: str) -> Check:
    source, found = parse_xid(text)
    if source == "none":
        return warn(GPU_XID, "kernel log not readable",
                    "allow it (sysctl kernel.dmesg_restrict=0, or the systemd-journal group) to check Xids")
    if found:
        codes = Counter(code for _, code in found)
        shown = ", ".join(f"Xid {c}" + (f" x{n}" if n > 1 else "") for c, n in sorted(codes.items()))
        return warn(GPU_XID, f"{shown} since boot ({source})",
                    "see NVIDIA's Xid catalog; 48/79/94/95 mean a GPU reset or reboot")
    return ok(GPU_XID, f"no Xid since boot ({source})")


# --------------------------------------------------------------------------- env section


@dataclass
class EnvFacts:
    """What the env section printed."""

    envfile: str | None = None          # None: no env file planned; "missing"; else its rc
    envout: list[str] = field(default_factory=list)
    python: str | None = None
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)   # mod -> (state, version)
    commands: dict[str, str] = field(default_factory=dict)
    torch: str | None = None
    cuda: str | None = None
    ifnames: dict[str, str] = field(default_factory=dict)
    nics: dict[str, str] = field(default_factory=dict)
    addrs: dict[str, list[str]] = field(default_factory=dict)
    model: list[list[str]] = field(default_factory=list)
    peers: list[tuple[str, str, str]] = field(default_factory=list)


def tagged(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """``(tag, rest, words of rest)`` for each ``TAG REST`` line the probe printed."""
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        yield tag, rest, rest.split()


def parse_env(text: str) -> EnvFacts:
    """The tagged lines of the env section (:func:`cluster.preflight.probe.env_script`)."""
    facts = EnvFacts()
    for tag, rest, words in tagged(text):
        if tag == "envfile" and words:
            facts.envfile = words[0]
        elif tag == "envout":
            facts.envout.append(rest)
        elif tag == "python":
            facts.python = words[0] if words and words[0] != "-" else None
        elif tag == "module" and len(words) >= 2:
            facts.modules[words[0]] = (words[1], words[2] if len(words) > 2 else "-")
        elif tag == "cmd" and len(words) >= 2:
            facts.commands[words[0]] = words[1]
        elif tag in ("torch", "cuda") and words:
            setattr(facts, tag, None if words[0] == "-" else words[0])
        elif tag == "ifname" and words:
            if len(words) > 1:
                facts.ifnames[words[0]] = words[1]
        elif tag == "nic" and len(words) >= 2:
            facts.nics[words[0]] = words[1]
        elif tag == "addr" and len(words) >= 2:
            facts.addrs.setdefault(words[0].split("@")[0], []).append(words[1])
        elif tag == "model":
            facts.model.append(words)
        elif tag == "peer" and len(words) >= 3:
            facts.peers.append((words[0], words[1], words[2]))
    return facts


_SECRET_ASSIGN = re.compile(r"(\b[A-Za-z_]*(?:%s)[A-Za-z_]*\s*[=:]\s*)\S+" % "|".join(SECRET_NAME_PARTS), re.I)


def mask_text(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with secret-looking assignments (``HF_TOKEN=...``) and known secret values masked."""
    for value in secrets:
        if value:
            text = text.replace(value, MASK)
    return _SECRET_ASSIGN.sub(lambda m: m.group(1) + MASK, text)


def judge_env(section: Section | None, plan: Any, result: HostResult, *, fast: bool = False) -> EnvFacts:
    """env.file, sw.python, sw.engine, sw.launcher (+ sw.torch, sw.cuda); records facts."""
    if section is None:
        result.checks.append(fail(ENV_FILE if plan.env_file else PYTHON, "the check did not run",
                                  "see the host's error"))
        return EnvFacts()
    facts = parse_env(section.output)
    if plan.env_file:
        result.checks.append(_env_file(plan.env_file, facts, plan.secrets))
    if facts.python is None:
        result.checks.append(fail(PYTHON, f"{plan.python} not found",
                                  "install python3, or set serving.env_file to the file that activates it"))
    elif not fast:
        result.checks.append(ok(PYTHON, f"python {facts.python}"))
    _modules(plan, facts, result)
    for command in plan.commands:
        where = facts.commands.get(command, "-")
        result.checks.append(ok(LAUNCHER, f"{command} at {where}") if where != "-" else
                             fail(LAUNCHER, f"{command} not on PATH",
                                  "install it, or set serving.env_file to the file that activates it"))
    if not fast and plan.serves:
        result.facts["torch"] = facts.torch or ""
        result.facts["cuda"] = facts.cuda or ""
        result.checks.append(ok(TORCH, facts.torch) if facts.torch else
                             warn(TORCH, "torch not installed (no metadata)", "the engine needs torch"))
        result.checks.append(ok(CUDA, f"CUDA runtime {facts.cuda}") if facts.cuda else
                             ok(CUDA, "CUDA runtime not from pip (not compared)"))
    return facts


def _env_file(path: str, facts: EnvFacts, secrets: Sequence[str]) -> Check:
    if facts.envfile == "missing":
        return fail(ENV_FILE, f"env file not found: {path}", "create it on that host, or fix serving.env_file / --env-file")
    if facts.envfile is None or not facts.envfile.lstrip("-").isdigit():
        return fail(ENV_FILE, f"{path}: sourcing it did not report", "source it by hand on that host")
    if facts.envfile != "0":
        said = mask_text(facts.envout[-1], secrets)[:160] if facts.envout else "no output"
        return fail(ENV_FILE, f". {path} exits {facts.envfile}: {said}",
                    "source it by hand on that host (bash -c '. FILE; echo $?') and fix the failing line")
    return ok(ENV_FILE, f"{path} sources cleanly")


def _modules(plan: Any, facts: EnvFacts, result: HostResult) -> None:
    for module, _dist in plan.modules:
        state, version = facts.modules.get(module, ("missing", "-"))
        name = ENGINE if module == plan.engine_package else LAUNCHER
        if state != "ok" and name == ENGINE and plan.commands:
            # Launched as a command (`vllm serve`): sw.launcher judges it; python3 may be
            # another interpreter than the command's, so only the version is unknown.
            result.checks.append(warn(name, f"{module}: {plan.python} cannot import it (version not compared)",
                                      "run the check's python from the engine's environment (env file)"))
            continue
        if state != "ok":
            why = "cannot be imported (broken install)" if state == "broken" else "not importable"
            result.checks.append(fail(name, f"{module} {why} by {plan.python}",
                                      f"pip install {module.replace('_', '-')} in the serving environment, "
                                      "or set serving.env_file to the file that activates it"))
            continue
        result.checks.append(ok(name, f"{module} {version}"))
        if name == ENGINE and version != "-":
            result.facts["engine"] = f"{module} {version}"
        elif version != "-":
            result.facts["router"] = f"{module} {version}"


def judge_nics(facts: EnvFacts) -> Check | None:
    """net.nic: every interface NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME names (NCCL's
    syntax: comma list, ``^`` excludes, ``=`` exact, else a prefix) exists, is up, has an address."""
    if not facts.ifnames:
        return None
    problems, seen = [], []
    for var, value in facts.ifnames.items():
        for item in value.split(","):
            item = item.strip()
            if not item or item.startswith("^"):
                continue
            exact = item.startswith("=")
            name = item.lstrip("=")
            matches = [n for n in facts.nics if (n == name if exact else n.startswith(name))]
            if not matches:
                problems.append(f"{var}={value}: no interface {name}")
                continue
            for nic in matches:
                state = facts.nics[nic]
                if state not in ("up", "unknown"):
                    problems.append(f"{nic} is {state}")
                elif not facts.addrs.get(nic):
                    problems.append(f"{nic} has no address")
                else:
                    seen.append(f"{nic} {facts.addrs[nic][0]}")
    if problems:
        return fail(NIC, "; ".join(problems), "name an interface this host has (ip -br link), "
                    "e.g. per node type in the env file")
    return ok(NIC, ", ".join(dict.fromkeys(seen)))


def judge_peers(facts: EnvFacts, planned: Sequence[tuple[str, int]]) -> Check | None:
    """net.peers: TCP from this host to a planned port of each peer (refused = reachable)."""
    if not planned:
        return None
    if not facts.peers:
        return warn(PEERS, "not checked (no python3?)", "check TCP to the peers by hand")
    bad = [f"{h}:{p} {r}" for h, p, r in facts.peers if r != "ok"]
    if bad:
        return fail(PEERS, "cannot reach " + ", ".join(bad[:4]),
                    "firewall / routes between the nodes: the KV transfer and NCCL need them")
    return ok(PEERS, f"reaches {len(facts.peers)} peer(s)")


def judge_model(model: str | None, facts: EnvFacts, result: HostResult, *, fast: bool = False) -> None:
    """model.present and the manifest fact (file names + sizes fingerprint). ``fast``
    (start-pd): an HF id missing from the cache is a warning even offline — the engine
    fails on it at once, not after a long load."""
    if not model:
        return
    lines = {words[0]: words[1:] for words in facts.model if words}
    kinds = [words[0] for words in facts.model if words]
    kind = kinds[0] if kinds else None
    if kind in ("dir", "hf-cached"):
        count, size = (lines.get("files") or ["0", "0"])[:2]
        value = f"{model}: {count} files, {int(float(size)) / 1e9:.1f} GB"
        if count == "0":
            result.checks.append(fail(MODEL, f"{model}: empty directory", "copy the model to this host"))
        elif (lines.get("config") or ["no"])[0] != "yes":
            result.checks.append(fail(MODEL, f"{value}, no config.json", "the copy is incomplete"))
        else:
            result.checks.append(ok(MODEL, value + (" (HF cache)" if kind == "hf-cached" else "")))
        manifest = (lines.get("manifest") or [""])[0]
        deep = (lines.get("deep") or [""])[0]
        result.facts["model"] = f"{count} files {size} bytes {manifest}" + (f" {deep}" if deep else "")
    elif kind == "file":
        result.checks.append(ok(MODEL, f"{model}: file of {(lines.get('file') or ['?'])[0]} bytes"))
    elif kind == "hf-missing":
        offline = (lines.get("hf-missing") or [""])[0] if lines.get("hf-missing") else ""
        if offline and offline not in ("0", "false", "False") and not fast:
            result.checks.append(fail(MODEL, f"{model} not in the HF cache and HF_HUB_OFFLINE={offline}",
                                      "download it on that host (huggingface-cli download) or unset HF_HUB_OFFLINE"))
        else:
            result.checks.append(warn(MODEL, f"{model} not in the HF cache: will download at start",
                                      "pre-download it (huggingface-cli download) to save the load time"))
    elif kind == "missing":
        result.checks.append(fail(MODEL, f"{model} not found", "copy the model to this path on that host"))
    else:
        result.checks.append(fail(MODEL, f"{model}: the check did not report", "see the host's error"))


# --------------------------------------------------------------------------- ib, ports, system


def parse_ib(text: str) -> dict[str, dict[str, str]]:
    """``{device: {port: state}}``; a missing device maps to ``{}``."""
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        words = line.split(None, 3)
        if len(words) < 4 or words[0] != "ib":
            continue
        ports = found.setdefault(words[1], {})
        if words[3] != "missing":
            ports[words[2]] = words[3]
    return found


def judge_ib(text: str, devices: Sequence[str]) -> Check | None:
    """net.ib: each device named by the engine's flags exists with an ACTIVE port."""
    if not devices:
        return None
    found = parse_ib(text)
    problems, good = [], []
    for dev in devices:
        ports = found.get(dev)
        if not ports:
            problems.append(f"{dev} missing")
            continue
        active = [p for p, state in ports.items() if "ACTIVE" in state.upper()]
        if active:
            good.append(f"{dev} port {active[0]} ACTIVE")
        else:
            problems.append(f"{dev} " + ", ".join(f"port {p} {s.split(':')[-1].strip()}" for p, s in ports.items()))
    if problems:
        return fail(IB, "; ".join(problems), "check `ibstat` / `ibv_devices`; fix the cable/switch port "
                    "or name the right devices in --disaggregation-ib-device")
    return ok(IB, ", ".join(good))


def judge_ports(text: str, ports: Sequence[int], bind: str | None) -> Check | None:
    """net.ports: every planned port is free on the bind address."""
    if not ports:
        return None
    from ..serving.scripts import parse_ports_free

    state = parse_ports_free(text)
    busy = [p for p in ports if state.get(p) is False]
    unknown = [p for p in ports if p not in state]
    if busy:
        return fail(PORTS, f"in use on {bind}: {', '.join(map(str, busy))}",
                    "find the owner (ss -ltnp) and stop it, or choose other ports")
    if unknown:
        return fail(PORTS, f"not checked: {', '.join(map(str, unknown))}", "see the host's error")
    return ok(PORTS, f"free: {', '.join(map(str, ports))}")


@dataclass
class SystemFacts:
    shm_kib: int | None = None
    memlock: str | None = None
    disks: list[tuple[str, int | None, str]] = field(default_factory=list)
    load: float | None = None
    cpus: int | None = None
    clock: float | None = None


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_system(text: str) -> SystemFacts:
    facts = SystemFacts()
    for tag, _rest, words in tagged(text):
        if tag == "shm" and words:
            facts.shm_kib = _int(words[0])
        elif tag == "memlock" and words:
            facts.memlock = words[0]
        elif tag == "disk" and len(words) >= 2:
            avail = _int(words[1])
            facts.disks.append((words[0], avail, " ".join(words[2:]) if avail is not None else " ".join(words[1:])))
        elif tag == "load" and words:
            try:
                facts.load = float(words[0])
            except ValueError:
                pass
            facts.cpus = _int(words[1]) if len(words) > 1 else None
        elif tag == "clock" and words:
            try:
                facts.clock = float(words[0])
            except ValueError:
                pass
    return facts


def judge_system(text: str, plan: Any, window: tuple[float, float] | None) -> list[Check]:
    """sys.shm, sys.memlock, sys.disk, sys.load, sys.clock."""
    facts = parse_system(text)
    checks = []
    if plan.serves:
        checks.append(_shm(facts.shm_kib))
        checks.append(_memlock(facts.memlock, bool(plan.ib_devices)))
    for label, avail, where in facts.disks:
        checks.append(_disk(label, avail, where))
    if facts.load is not None and facts.cpus:
        per = facts.load / facts.cpus
        checks.append(warn(LOAD, f"load {facts.load:g} on {facts.cpus} CPUs", "something else keeps the host busy")
                      if per > LOAD_WARN_PER_CPU else ok(LOAD, f"load {facts.load:g} on {facts.cpus} CPUs"))
    checks.append(judge_clock(facts.clock, window))
    return checks


def _shm(kib: int | None) -> Check:
    if kib is None:
        return warn(SHM, "/dev/shm not found", "mount a tmpfs on /dev/shm (docker: --shm-size 32g)")
    value = f"/dev/shm {kib / (1 << 20):.1f} GiB"
    if kib < SHM_FAIL_KIB:
        return fail(SHM, value, "too small for NCCL and the engine's IPC: docker --shm-size 32g, or remount")
    if kib < SHM_WARN_KIB:
        return warn(SHM, value, "small: docker --shm-size 32g, or remount /dev/shm larger")
    return ok(SHM, value)


def _memlock(value: str | None, rdma: bool) -> Check:
    if value == "unlimited":
        return ok(MEMLOCK, "unlimited")
    # A warning, not a failure: the engine may run under a launcher that raises it.
    shown = f"ulimit -l {value or '?'} KiB" + (" (RDMA memory registration needs unlimited)" if rdma else "")
    return warn(MEMLOCK, shown, "set memlock unlimited (/etc/security/limits.conf, docker --ulimit memlock=-1)")


def _disk(label: str, avail: int | None, where: str) -> Check:
    if avail is None:
        return warn(DISK, f"{label} dir {where}: free space unknown", "check df on the host")
    value = f"{label} dir {where}: {avail / (1 << 20):.1f} GiB free"
    if label == "run" and avail < DISK_FAIL_KIB:
        return fail(DISK, value, "free space there (logs fill it), or set serving.run_dir elsewhere")
    if label == "run" and avail < DISK_WARN_KIB:
        return warn(DISK, value, "logs may fill it during a long run")
    return ok(DISK, value)


def judge_clock(remote: float | None, window: tuple[float, float] | None) -> Check:
    """sys.clock: the host's ``date`` against the controller's clock before and after the
    round trip; the offset counts only outside that window (the round trip is the uncertainty)."""
    if remote is None or window is None:
        return warn(CLOCK, "clock not read", "check `date` on the host (busybox date lacks %N)")
    before, after = window
    offset = remote - before if remote < before else remote - after if remote > after else 0.0
    value = f"offset {offset:+.1f} s (±{(after - before) / 2:.1f} s)"
    if abs(offset) > CLOCK_FAIL_S:
        return fail(CLOCK, value, "sync the clock (chronyc tracking / timedatectl)")
    if abs(offset) > CLOCK_WARN_S:
        return warn(CLOCK, value, "sync the clock (chronyc tracking / timedatectl)")
    return ok(CLOCK, value)


# --------------------------------------------------------------------------- one host


def judge_host(plan: Any, answers: Mapping[str, Section], *, fast: bool = False,
               window: tuple[float, float] | None = None) -> HostResult:
    """Every check of one host from its sections (``plan``: its `HostPlan`)."""
    from . import probe

    result = HostResult(roles=plan.roles)
    if plan.serves:
        gpu_checks, status = judge_gpus(answers.get(probe.GPU), plan.gpus_needed)
        if fast and (status is None or not status.gpus):
            # start-pd: a host without readable GPUs holds none; full preflight fails it.
            gpu_checks = [warn(GPU_FREE, "no GPU could be read: not checked", "run inv preflight")]
        result.checks.extend(c for c in gpu_checks if not fast or c.name == GPU_FREE)
        if status is not None and status.gpus:
            models = sorted({g.name or "?" for g in status.gpus})
            result.facts["gpu"] = ",".join(models)
    env = answers.get(probe.ENV)
    text = env.output if env is not None else ""
    if plan.serves and not fast:
        judge_gpu_info(text, result)
        result.checks.append(judge_xid(text))
    facts = judge_env(env, plan, result, fast=fast)
    if plan.serves:
        judge_model(plan.model_path, facts, result, fast=fast)
    optional = [judge_ports(text, plan.ports, plan.bind)]
    if not fast:
        optional += [judge_nics(facts), judge_ib(text, plan.ib_devices), judge_peers(facts, plan.peers)]
    result.checks.extend(c for c in optional if c is not None)
    if not fast:
        result.checks.extend(judge_system(text, plan, window))
    return result


# --------------------------------------------------------------------------- consistency

# Facts that must be equal on every host (gpu: on every host of a role), and their check.
CONSISTENT = {"engine": ENGINE, "router": LAUNCHER, "driver": GPU_DRIVER, "cuda": CUDA,
              "torch": TORCH, "model": MODEL_MANIFEST}


@dataclass(frozen=True)
class ValueGroup:
    """Hosts that share one value of a fact; ``ok`` False for the odd ones out."""

    hosts: tuple[str, ...]
    value: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"hosts": list(self.hosts), "value": self.value, "ok": self.ok}


@dataclass(frozen=True)
class Consistency:
    """One fact across the hosts that report it (``scope``: all, or one role for gpu)."""

    fact: str
    scope: str
    groups: tuple[ValueGroup, ...]

    def to_json(self) -> dict[str, Any]:
        return {"fact": self.fact, "scope": self.scope, "groups": [g.to_json() for g in self.groups]}


def majority(values: Mapping[str, str]) -> str:
    """The value most hosts hold (a tie: the one the first such host holds)."""
    counts = Counter(values.values())
    best = max(counts.values())
    return next(v for v in values.values() if counts[v] == best)


def compare(results: Mapping[str, HostResult]) -> list[Consistency]:
    """Fold each fact across hosts; add a ``fail`` check to every host whose value differs
    from the majority's (hosts that could not report it are not compared)."""
    views: list[Consistency] = []
    scopes: list[tuple[str, str, dict[str, str]]] = []
    for fact in CONSISTENT:
        values = {h: r.facts[fact] for h, r in results.items() if r.facts.get(fact)}
        scopes.append((fact, "all", values))
    for role in dict.fromkeys(role for r in results.values() for role in r.roles):
        values = {h: r.facts["gpu"] for h, r in results.items() if r.facts.get("gpu") and role in r.roles}
        scopes.append(("gpu", role, values))
    for fact, scope, values in scopes:
        if not values:
            continue
        ref = majority(values)
        groups: dict[str, list[str]] = {}
        for host, value in values.items():
            groups.setdefault(value, []).append(host)
        views.append(Consistency(fact, scope, tuple(
            ValueGroup(tuple(hosts), value, value == ref) for value, hosts in groups.items())))
        if len(groups) > 1:
            name = GPU_MODEL if fact == "gpu" else CONSISTENT[fact]
            where = f" of the {scope} hosts" if scope != "all" else ""
            for host, value in values.items():
                if value != ref:
                    results[host].checks.append(fail(
                        name, f"{fact} {value}, most hosts{where} have {ref}",
                        "install the same version everywhere (one image / one venv for the deployment)"
                        if fact != "model" else "re-copy the model: its file list or sizes differ"))
    return views
