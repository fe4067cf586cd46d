"""GPU probe: one ``nvidia-smi`` round trip per host, parsed into dataclasses.

Pure module: it builds the command string, parses its stdout, judges GPU
health against `HealthLimits` and classifies failures. Running it over SSH is
the ``ssh`` layer's job.

Command and output layout
-------------------------
`COMMAND` runs the queries in one shell (the user's login shell, POSIX syntax)::

    nvidia-smi --query-gpu=<current fields> --format=csv,noheader,nounits; rc=$?
    if [ $rc = 2 ]; then                     # 2: this driver rejects a field
        echo '@@gpu-fields legacy'; nvidia-smi --query-gpu=<legacy fields> ...; rc=$?
    fi
    if [ $rc = 2 ]; then echo '@@gpu-fields base'; nvidia-smi --query-gpu=<base fields> ...; rc=$?; fi
    case $rc in 0|14|15)                     # data printed (14: infoROM warning, 15: a GPU lost)
        echo '@@compute-apps'
        nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory,process_name ...
        echo "@@compute-apps-exit $?";;
    esac
    exit $rc                                  # the host's exit code is nvidia-smi's own

nvidia-smi refuses a whole query when one field is unknown to its driver
(``Field "X" is not a valid field to query.`` on stdout, exit 2), so the
health fields come in `FIELD_SETS`, newest first, and the shell falls back to
the next set, in the same round trip, only on such a refusal:

``current``  `BASE_FIELDS` + `HEALTH_FIELDS` (``temperature.gpu.tlimit``,
             ``clocks_event_reasons.active``, ``remapped_rows.pending``,
             ``retired_pages.pending``, ``gpu_recovery_action``): drivers
             that know all of them (R550 and later).
``legacy``   `BASE_FIELDS` + `LEGACY_HEALTH_FIELDS` (the reasons under their
             old name ``clocks_throttle_reasons.active``, remapped rows,
             retired pages): older drivers; slowdown margin and recovery
             action are null.
``base``     `BASE_FIELDS` only: drivers that know no remapped rows either;
             every health value is null.

A healthy current driver costs one GPU query, as before. Stdout is the
refused attempts' lines, each followed by a ``@@gpu-fields <set>`` marker,
then the GPU rows of the set that answered, then (when a query produced data)
a marker line, the process rows and a trailer with the process query's exit
code. Columns are mapped by position (the answering set's order) and every
row's width is checked; ``process_name`` is queried last so a name holding
``", "`` is rebuilt from the trailing fields. nvidia-smi prints its errors on
stdout, so the failure text is read from there.

Values
------
Every bracketed token nvidia-smi prints instead of a value (``[N/A]``,
``[Not Supported]``, ``[Unknown Error]``, ``[Insufficient Permissions]``,
``[GPU requires reset]``, ``[Requested functionality has been deprecated]``...)
becomes ``None``; the token itself is kept in ``Gpu.tokens`` /
``GpuProcess.tokens`` under the JSON field name. GPU flags:

``reset-required``  a field printed ``[GPU requires reset]`` (a fault)
``unknown-error``   a core field (memory, utilization, temperature, power draw)
                    printed ``[Unknown Error]`` (a fault; the same token on
                    ``fan.speed``/``power.limit`` is common on healthy consumer
                    cards and is not treated as one)
``mig``             MIG mode enabled: utilization is ``[N/A]`` by design, show
                    "MIG", never 0 %
``inforom``         ``WARNING: infoROM is corrupted at gpu <bus id>`` named it

Health values (``slowdown_margin_c``, ``clock_event_reasons``,
``remapped_rows_pending``, ``retired_pages_pending``, ``recovery_action``,
``ecc_uncorrected``) are judged by `cluster.gpu_health` against
`cluster.gpu_health.HealthLimits`: each GPU carries its ``warnings`` (kind,
value, limit) and ``GpuStatus.warnings`` lists every GPU's. Warnings never make
a host fail; a value nvidia-smi did not report (``[N/A]``, or not queried on an
older driver) gives no warning.

Failure kinds (`classify`)
--------------------------
``no-gpu-tool``  exit 127: nvidia-smi is not installed (a CPU host).
``driver``       exit 9 (driver not loaded), 12 (NVML library missing) or
                 18 (driver/library version mismatch: reboot or reload).
``nvml``         exit 255: NVML failed to initialise; the message is the first
                 line nvidia-smi printed ("Failed to initialize NVML: ...").
``gpu-lost``     exit 15, or only ``Unable to determine the device handle``
                 lines: no GPU could be read.
``no-gpu``       nvidia-smi ran but listed no GPU (exit 6 "No devices were
                 found", or exit 0 with no rows).
``degraded``     nvidia-smi listed GPUs but at least one is lost (``Unable to
                 determine the device handle for GPU...``) or faulted
                 (``reset-required``/``unknown-error``), or a line of its
                 output was not understood (partial data). The host counts as
                 failed (exit 1), so a script sees it, while the parsed GPUs
                 stay available on the outcome for the table; the message
                 names the lost/faulted GPUs.
``bad-output``   exit 0 but nothing could be parsed.
``exit``         any other nonzero exit (2: a queried field is unknown to this
                 nvidia-smi, 4: no permission...), message = nvidia-smi's text.

Not failures: exit 14 (infoROM corrupted, data still valid: a warning), MIG,
health warnings,
``[N/A]`` values, an empty process list, and a failed process query after a
good GPU query (recorded in ``GpuStatus.processes_error``).
A wedged nvidia-smi is the SSH layer's ``command-timeout``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

from . import gpu_health
from .defaults import GPU_TIMEOUT_S
from .gpu_health import DEFAULT_LIMITS, HealthLimits, HealthWarning, judge
from .options import seconds
from .probe import Probe
from .result import EXIT, Failure

# --- failure kinds added by this probe (documented above) -----------------
NO_GPU_TOOL = "no-gpu-tool"
DRIVER = "driver"
NVML = "nvml"
GPU_LOST = "gpu-lost"
NO_GPU = "no-gpu"
DEGRADED = "degraded"
BAD_OUTPUT = "bad-output"
KINDS = (NO_GPU_TOOL, DRIVER, NVML, GPU_LOST, NO_GPU, DEGRADED, BAD_OUTPUT)

# --- GPU flags --------------------------------------------------------------
FLAG_RESET = "reset-required"
FLAG_UNKNOWN = "unknown-error"
FLAG_MIG = "mig"
FLAG_INFOROM = "inforom"
FAULT_FLAGS = frozenset({FLAG_RESET, FLAG_UNKNOWN})

# (nvidia-smi query field, Gpu attribute / JSON name, value kind). The order is
# the column order of the output; index, uuid and name come first (the
# stand-in's ``-L`` relies on that). Kinds: int, float, str, "yes-no" (bool),
# "hex" (``0x...`` bitmask as int).
Field = tuple[str, str, Any]
BASE_FIELDS: tuple[Field, ...] = (
    ("index", "index", int),
    ("uuid", "uuid", str),
    ("name", "name", str),
    ("pci.bus_id", "pci_bus_id", str),
    ("memory.used", "memory_used_mib", int),
    ("memory.total", "memory_total_mib", int),
    ("utilization.gpu", "utilization_pct", int),
    ("utilization.memory", "memory_utilization_pct", int),
    ("temperature.gpu", "temperature_c", int),
    ("power.draw", "power_w", float),
    ("power.limit", "power_limit_w", float),
    ("fan.speed", "fan_pct", int),
    ("pstate", "pstate", str),
    ("mig.mode.current", "mig_mode", str),
    ("ecc.errors.uncorrected.volatile.total", "ecc_uncorrected", int),
)
YES_NO = "yes-no"
HEX = "hex"
# temperature.gpu.tlimit is the margin in degrees C left before the GPU's maximum
# operating temperature, "T.Limit" (NVML's margin temperature: 54 on an idle H200
# at 33 degrees C, driver 580; its nvidia-smi -q puts the clocks' slowdown at
# T.Limit -2 and the shutdown at -8).
HEALTH_FIELDS: tuple[Field, ...] = (
    ("temperature.gpu.tlimit", "slowdown_margin_c", int),
    ("clocks_event_reasons.active", "clock_event_reasons", HEX),
    ("remapped_rows.pending", "remapped_rows_pending", YES_NO),
    ("retired_pages.pending", "retired_pages_pending", YES_NO),
    ("gpu_recovery_action", "recovery_action", str),
)
LEGACY_HEALTH_FIELDS: tuple[Field, ...] = (
    ("clocks_throttle_reasons.active", "clock_event_reasons", HEX),
    ("remapped_rows.pending", "remapped_rows_pending", YES_NO),
    ("retired_pages.pending", "retired_pages_pending", YES_NO),
)
# Tried in this order; the shell falls back to the next on exit 2 (module docstring).
FIELD_SETS: dict[str, tuple[Field, ...]] = {
    "current": BASE_FIELDS + HEALTH_FIELDS,
    "legacy": BASE_FIELDS + LEGACY_HEALTH_FIELDS,
    "base": BASE_FIELDS,
}
FIRST_SET = "current"
GPU_FIELDS = FIELD_SETS[FIRST_SET]
# process_name last: it may contain ", " and is rebuilt from the trailing fields.
PROCESS_FIELDS = ("gpu_uuid", "pid", "used_memory", "process_name")

# Fields whose [Unknown Error] means the GPU itself is not answering.
_CORE_FIELDS = frozenset(
    {"memory_used_mib", "memory_total_mib", "utilization_pct", "temperature_c", "power_w"}
)

APPS_MARKER = "@@compute-apps"
APPS_EXIT_MARKER = "@@compute-apps-exit"
FIELDS_MARKER = "@@gpu-fields"
_FORMAT = "--format=csv,noheader,nounits"


def _gpu_query(fields: tuple[Field, ...]) -> str:
    return f"nvidia-smi --query-gpu={','.join(f for f, _, _ in fields)} {_FORMAT}; rc=$?; "


def _command() -> str:
    names = list(FIELD_SETS)
    text = _gpu_query(FIELD_SETS[names[0]])
    for name in names[1:]:
        text += (f"if [ $rc = 2 ]; then echo '{FIELDS_MARKER} {name}'; "
                 f"{_gpu_query(FIELD_SETS[name])}fi; ")
    return (text + f"case $rc in 0|14|15) echo '{APPS_MARKER}'; "
            f"nvidia-smi --query-compute-apps={','.join(PROCESS_FIELDS)} {_FORMAT}; "
            f'echo "{APPS_EXIT_MARKER} $?";; esac; exit $rc')


COMMAND = _command()

# nvidia-smi RETURN VALUE section (man page), plus NVML's 18 seen as an exit code.
RETURN_CODES = {
    2: "invalid argument or field",
    3: "operation not available on the device",
    4: "no permission",
    6: "a query to find an object was unsuccessful",
    8: "external power cables not attached",
    9: "NVIDIA driver is not loaded",
    10: "kernel detected an interrupt issue with a GPU",
    12: "NVML shared library not found or not loaded",
    13: "local NVML does not implement the function",
    14: "infoROM is corrupted",
    15: "GPU has fallen off the bus or become inaccessible",
    18: "driver/library version mismatch",
    255: "other or internal driver error",
}

_LOST = re.compile(r"^Unable to determine the device handle for GPU")
# No \b before the domain: the newer "for GPU0000:65:00.0" form glues it to "GPU".
_BUS_ID = re.compile(
    r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])\b")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")
_REJECTED = re.compile(r'^Field "([^"]+)" is not a valid field to query')
_INFOROM = re.compile(r"inforom", re.IGNORECASE)
_HEX_VALUE = re.compile(r"^0[xX][0-9a-fA-F]+$")
_YES_NO = {"yes": True, "no": False, "active": True, "not active": False,
           "enabled": True, "disabled": False}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass
class Gpu:
    """One physical GPU row of ``nvidia-smi --query-gpu``. ``None`` = not reported."""

    index: int
    uuid: str | None
    name: str | None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    pci_bus_id: str | None = None
    memory_utilization_pct: int | None = None
    fan_pct: int | None = None
    pstate: str | None = None
    mig_mode: str | None = None
    ecc_uncorrected: int | None = None
    slowdown_margin_c: int | None = None
    clock_event_reasons: int | None = None
    remapped_rows_pending: bool | None = None
    retired_pages_pending: bool | None = None
    recovery_action: str | None = None
    flags: list[str] = field(default_factory=list)
    # JSON field name -> the token printed instead of a value ("[N/A]"...).
    tokens: dict[str, str] = field(default_factory=dict)
    warnings: list[HealthWarning] = field(default_factory=list)

    @property
    def mig(self) -> bool:
        return FLAG_MIG in self.flags

    @property
    def faults(self) -> list[str]:
        """Fault flags (reset-required, unknown-error), in flag order."""
        return [f for f in self.flags if f in FAULT_FLAGS]

    @property
    def label(self) -> str:
        """How to name this GPU in a message: ``GPU 3 (00000000:5D:00.0)``."""
        return f"GPU {self.index}" + (f" ({self.pci_bus_id})" if self.pci_bus_id else "")

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's gpu fields first, then the extras."""
        doc = {name: getattr(self, name) for _, name, _ in _JSON_GPU_ORDER}
        doc["flags"] = list(self.flags)
        doc["tokens"] = dict(self.tokens)
        doc["warnings"] = [w.to_json() for w in self.warnings]
        return doc


# DESIGN.md order for the contract fields, then the extras in query order.
_CONTRACT = ("index", "uuid", "name", "memory_used_mib", "memory_total_mib",
             "utilization_pct", "temperature_c", "power_w", "power_limit_w")
_JSON_GPU_ORDER = tuple(sorted(GPU_FIELDS, key=lambda f: (
    _CONTRACT.index(f[1]) if f[1] in _CONTRACT else len(_CONTRACT) + GPU_FIELDS.index(f))))


@dataclass
class GpuProcess:
    """One compute process on one GPU (a process on two GPUs gives two rows)."""

    pid: int | None
    name: str
    gpu_uuid: str | None
    used_memory_mib: int | None
    gpu_index: int | None = None  # resolved from gpu_uuid; None when not listed
    tokens: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "gpu_uuid": self.gpu_uuid,
            "used_memory_mib": self.used_memory_mib,
            "gpu_index": self.gpu_index,
            "tokens": dict(self.tokens),
        }


@dataclass
class GpuSummary:
    """One host at a glance: what the default gpu-status table shows."""

    gpu_count: int
    models: list[str]
    utilization_mean: float | None
    utilization_max: int | None
    mig_gpus: int
    memory_used_mib: int
    memory_total_mib: int
    temperature_max: int | None
    power_w: float | None
    power_limit_w: float | None
    process_count: int
    lost_count: int
    degraded: bool
    warning_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__, models=list(self.models))


@dataclass
class GpuStatus:
    """Everything COMMAND's stdout said about one host."""

    gpus: list[Gpu] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)
    # Bus ids (``00000000:5D:00.0`` form) of GPUs nvidia-smi could not open;
    # the full line is in ``notices``.
    lost: list[str] = field(default_factory=list)
    # Lines nvidia-smi printed instead of rows: "Unable to determine...",
    # "WARNING: ...", a refused field.
    notices: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    # Set when the process query failed after a good GPU query.
    processes_error: str | None = None
    # The FIELD_SETS entry that answered (older drivers: "legacy" or "base").
    field_set: str = FIRST_SET
    # Health warnings not tied to a listed GPU (an infoROM line naming no GPU row).
    host_warnings: list[HealthWarning] = field(default_factory=list)

    @property
    def faulted(self) -> list[Gpu]:
        return [g for g in self.gpus if g.faults]

    @property
    def warnings(self) -> list[HealthWarning]:
        """Every GPU's health warnings (GPU order), then the host's own."""
        return [w for g in self.gpus for w in g.warnings] + self.host_warnings

    @property
    def degraded(self) -> bool:
        """A GPU is lost or faulted, or a line was not understood, while nvidia-smi answered."""
        return bool(self.lost or self.faulted or (self.gpus and self.bad_lines))

    def other_notices(self) -> list[str]:
        """Notices not already told by a flag, a warning or the field-set fallback (shown once)."""
        told = (_LOST, _REJECTED, _INFOROM)
        return list(dict.fromkeys(n for n in self.notices if not any(r.search(n) for r in told)))

    def problems(self) -> list[str]:
        """One phrase per lost or faulted GPU, for messages."""
        found = [f"GPU {bus} cannot be opened" for bus in self.lost]
        found += [f"{g.label}: {', '.join(g.faults)}" for g in self.faulted]
        if self.bad_lines:
            # Partial data must not pass for a healthy host (a GPU row may be the one missing).
            found.append(f"{len(self.bad_lines)} line(s) not understood, first: "
                         f"{self.bad_lines[0][:120]!r}")
        return found

    def summary(self) -> GpuSummary:
        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        """The gpu-status task fields of one host (DESIGN.md names)."""
        return {
            "gpus": [g.to_json() for g in self.gpus],
            "processes": [p.to_json() for p in self.processes],
            "warnings": [w.to_json() for w in self.warnings],
            "lost": list(self.lost),
            "notices": list(self.notices),
            "bad_lines": list(self.bad_lines),
            "processes_error": self.processes_error,
            "field_set": self.field_set,
        }


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse(stdout: str, limits: HealthLimits = DEFAULT_LIMITS) -> GpuStatus:
    """Parse COMMAND's stdout and judge GPU health against ``limits``.

    Never raises on odd input: unknown lines go to ``bad_lines``.
    """
    sections = _split_sections(stdout)
    status = GpuStatus(field_set=sections.field_set, bad_lines=list(sections.bad_markers))
    status.notices.extend(sections.refused)
    fields = FIELD_SETS[sections.field_set]
    for line in sections.gpu_lines:
        if _take_notice(line, status):
            continue
        gpu = _parse_gpu_row(line, fields)
        if gpu is None:
            status.bad_lines.append(line)
        else:
            status.gpus.append(gpu)
    _parse_processes(sections.app_lines, sections.apps_rc, status)
    _apply_inforom_flags(status)
    for gpu in status.gpus:
        gpu.warnings = judge(gpu, limits)
    by_uuid = {g.uuid: g.index for g in status.gpus if g.uuid}
    for proc in status.processes:
        proc.gpu_index = by_uuid.get(proc.gpu_uuid) if proc.gpu_uuid else None
    return status


@dataclass
class _Sections:
    """COMMAND's stdout cut at its markers."""

    field_set: str = FIRST_SET
    refused: list[str] = field(default_factory=list)   # output of refused GPU queries
    gpu_lines: list[str] = field(default_factory=list)
    app_lines: list[str] = field(default_factory=list)
    apps_rc: int | None = None                         # None: the process query did not run
    bad_markers: list[str] = field(default_factory=list)


def _split_sections(stdout: str) -> _Sections:
    found = _Sections()
    target = found.gpu_lines
    for raw in stdout.splitlines():
        line = raw.strip()
        if line.startswith(FIELDS_MARKER + " ") and target is found.gpu_lines:
            _next_field_set(line[len(FIELDS_MARKER):].strip(), line, found)
        elif line == APPS_MARKER:
            target = found.app_lines
            found.apps_rc = 0 if found.apps_rc is None else found.apps_rc
        elif line.startswith(APPS_EXIT_MARKER + " ") and target is found.app_lines:
            code = line[len(APPS_EXIT_MARKER):].strip()
            found.apps_rc = int(code) if code.isdigit() else 255
        elif line:
            target.append(line)
    return found


def _next_field_set(name: str, line: str, found: _Sections) -> None:
    """A fallback marker: what came before was a refused query's output."""
    if name not in FIELD_SETS:
        found.bad_markers.append(line)
        return
    found.refused.extend(found.gpu_lines)
    found.gpu_lines.clear()
    found.field_set = name


def _take_notice(line: str, status: GpuStatus) -> bool:
    """Record an ``Unable to determine...``, ``WARNING:`` or refused-field line; False otherwise."""
    if _LOST.match(line):
        bus = _BUS_ID.search(line)
        name = normalize_bus_id(bus.group(0)) if bus else line
        if name not in status.lost:
            status.lost.append(name)
        status.notices.append(line)
        return True
    if line.upper().startswith("WARNING") or _REJECTED.match(line):
        status.notices.append(line)
        return True
    return False


def normalize_bus_id(text: str) -> str:
    """``0000:0b:00.0`` -> ``00000000:0B:00.0`` (the form ``pci.bus_id`` prints)."""
    match = _BUS_ID.search(text)
    if not match:
        return text
    domain, bus, dev, fn = match.groups()
    return f"{int(domain, 16):08X}:{bus.upper()}:{dev.upper()}.{fn.upper()}"


def _parse_gpu_row(line: str, fields: tuple[Field, ...] = GPU_FIELDS) -> Gpu | None:
    """One ``--query-gpu`` row of ``fields``, or None when its width or index is wrong."""
    cells = [c.strip() for c in line.split(",")]
    if len(cells) != len(fields) or not cells[0].isdigit():
        return None
    values: dict[str, Any] = {}
    tokens: dict[str, str] = {}
    for cell, (_, attr, kind) in zip(cells, fields):
        value = _value(cell, kind)
        if value is None:
            tokens[attr] = cell
        values[attr] = value
    gpu = Gpu(**values, tokens=tokens)
    gpu.flags = _flags(gpu)
    return gpu


def _value(cell: str, kind: Any) -> Any:
    """A typed value, or None for a token (``[N/A]``, ``N/A``, ``ERR!``, empty...)."""
    if not cell or (cell.startswith("[") and cell.endswith("]")):
        return None
    if kind is str:
        return None if cell.upper() == "N/A" else cell
    if kind == YES_NO:
        return _YES_NO.get(cell.lower())
    if kind == HEX:
        return int(cell, 16) if _HEX_VALUE.match(cell) else None
    match = _NUMBER.match(cell)  # also accepts "81559 MiB" should units slip in
    if not match:
        return None
    number = float(match.group(0))
    return round(number) if kind is int else number


def _flags(gpu: Gpu) -> list[str]:
    flags = []
    if any(t.lower() == "[gpu requires reset]" for t in gpu.tokens.values()):
        flags.append(FLAG_RESET)
    if any(t.lower() == "[unknown error]" and f in _CORE_FIELDS for f, t in gpu.tokens.items()):
        flags.append(FLAG_UNKNOWN)
    if (gpu.mig_mode or "").lower() == "enabled":
        flags.append(FLAG_MIG)
    return flags


def _parse_processes(lines: list[str], rc: int | None, status: GpuStatus) -> None:
    # 14 = infoROM warning: the rows are still valid.
    failed = rc not in (None, 0, 14)
    other: list[str] = []
    for line in lines:
        if _take_notice(line, status):
            continue
        proc = None if failed else _parse_process_row(line)
        if proc is None:
            other.append(line)
        else:
            status.processes.append(proc)
    if failed:
        first = other[0] if other else ""
        status.processes_error = f"process query exited {rc}" + (f": {first}" if first else "")
    else:
        status.bad_lines.extend(other)


def _parse_process_row(line: str) -> GpuProcess | None:
    """``uuid, pid, used_memory, name...``; the name keeps any ``", "`` it contains."""
    cells = re.split(r",\s*", line, maxsplit=3)
    if len(cells) != 4:
        return None
    uuid_cell, pid_cell, mem_cell, name = (c.strip() for c in cells)
    tokens: dict[str, str] = {}
    uuid = _value(uuid_cell, str)
    pid = _value(pid_cell, int)
    mem = _value(mem_cell, int)
    bad_uuid = uuid is not None and not _UUID.match(uuid)
    bad_pid = pid is None and not _is_token(pid_cell)
    if bad_uuid or bad_pid:
        return None
    for key, cell, value in (("gpu_uuid", uuid_cell, uuid), ("pid", pid_cell, pid),
                             ("used_memory_mib", mem_cell, mem)):
        if value is None:
            tokens[key] = cell
    return GpuProcess(pid=pid, name=name, gpu_uuid=uuid, used_memory_mib=mem, tokens=tokens)


def _is_token(cell: str) -> bool:
    return (cell.startswith("[") and cell.endswith("]")) or cell.upper() == "N/A"


def _apply_inforom_flags(status: GpuStatus) -> None:
    """Flag the GPU an infoROM warning names; a warning naming no listed GPU is the host's."""
    for notice in dict.fromkeys(status.notices):  # both queries print it: once is enough
        if not _INFOROM.search(notice):
            continue
        bus = _BUS_ID.search(notice)
        target = normalize_bus_id(bus.group(0)) if bus else None
        named = [g for g in status.gpus
                 if g.pci_bus_id and normalize_bus_id(g.pci_bus_id) == target]
        for gpu in named:
            if FLAG_INFOROM not in gpu.flags:
                gpu.flags.append(FLAG_INFOROM)
        if not named:
            status.host_warnings.append(HealthWarning(None, gpu_health.INFOROM))


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


def summarize(status: GpuStatus) -> GpuSummary:
    """Per-host aggregates: utilization over non-MIG GPUs that report it, sums of what is known."""
    gpus = status.gpus
    utils = [g.utilization_pct for g in gpus if g.utilization_pct is not None and not g.mig]
    temps = [g.temperature_c for g in gpus if g.temperature_c is not None]
    return GpuSummary(
        gpu_count=len(gpus),
        models=list(dict.fromkeys(g.name for g in gpus if g.name)),
        utilization_mean=round(sum(utils) / len(utils), 1) if utils else None,
        utilization_max=max(utils) if utils else None,
        mig_gpus=sum(1 for g in gpus if g.mig),
        memory_used_mib=sum(g.memory_used_mib or 0 for g in gpus),
        memory_total_mib=sum(g.memory_total_mib or 0 for g in gpus),
        temperature_max=max(temps) if temps else None,
        power_w=_sum_known(g.power_w for g in gpus),
        power_limit_w=_sum_known(g.power_limit_w for g in gpus),
        process_count=len(status.processes),
        lost_count=len(status.lost),
        degraded=status.degraded,
        warning_count=len(status.warnings),
    )


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 2) if known else None


# ---------------------------------------------------------------------------
# Failure classification
# ---------------------------------------------------------------------------


def classify(exit_code: int, stdout: str, stderr: str = "",
             parsed: GpuStatus | None = None) -> Failure | None:
    """The host's `Failure` for COMMAND's result, or None when the host is fine.

    See the module docstring for the kinds. ``parsed`` saves a second parse.
    """
    if parsed is None:
        parsed = parse(stdout)
    if exit_code == 127:
        return Failure(NO_GPU_TOOL, "no NVIDIA tools on this host (nvidia-smi not found)",
                       "a CPU-only host? install the NVIDIA driver utilities, or leave it out "
                       "of the host list", 127)
    if parsed.gpus:
        return _classify_with_rows(exit_code, parsed)
    handler = _NO_ROW_HANDLERS.get(exit_code)
    if handler is not None:
        return handler(exit_code, _first_line(stdout) or _first_line(stderr), parsed)
    return _classify_generic(exit_code, stdout, stderr, parsed)


def _classify_with_rows(exit_code: int, parsed: GpuStatus) -> Failure | None:
    problems = parsed.problems()
    if exit_code not in (0, 14) and not problems:
        meaning = RETURN_CODES.get(exit_code, "unknown error")
        problems.append(f"nvidia-smi exited {exit_code} ({meaning})")
    if not problems:
        return None
    if parsed.lost or exit_code == 15:
        hint = ("a GPU fell off the bus or is wedged (Xid 79?): check `dmesg | grep -i xid`; "
                "it usually needs a GPU reset or a reboot")
    elif parsed.faulted:
        hint = ("reset the GPU once no process uses it (`nvidia-smi -r -i <index>`) or reboot; "
                "check `dmesg | grep -i xid`")
    else:
        hint = "unexpected nvidia-smi output, a GPU may be missing: run nvidia-smi on the host"
    ok = len(parsed.gpus) - len(parsed.faulted)
    message = f"{'; '.join(problems)} ({ok} of {len(parsed.gpus) + len(parsed.lost)} GPUs healthy)"
    return Failure(DEGRADED, message, hint, exit_code or None)


def _driver_failure(code: int, first: str, _parsed: GpuStatus) -> Failure:
    if code == 18:
        return Failure(DRIVER, first or "driver/library version mismatch",
                       "the driver was upgraded without a reboot: reboot or reload the driver "
                       "(unload and reload the nvidia kernel modules)", code)
    if code == 12:
        return Failure(DRIVER, first or "NVML shared library not found",
                       "install the driver's user-space libraries (libnvidia-ml) matching the "
                       "kernel module", code)
    return Failure(DRIVER, "NVIDIA driver not loaded" + (f": {first}" if first else ""),
                   "the kernel module is not loaded (kernel update without a DKMS rebuild, "
                   "Secure Boot?): check `lsmod | grep nvidia` and dmesg; reinstall the driver "
                   "or reboot", code)


def _nvml_failure(code: int, first: str, _parsed: GpuStatus) -> Failure:
    if "no supported gpus" in first.lower():
        hint = "the driver is loaded but sees no GPU: check `lspci | grep -i nvidia` and dmesg"
    else:
        hint = ("NVML could not talk to the driver: check dmesg for Xid errors; "
                "a reboot may be needed")
    return Failure(NVML, first or "NVML error (nvidia-smi exit 255)", hint, code)


def _lost_failure(code: int, first: str, parsed: GpuStatus) -> Failure:
    what = ", ".join(parsed.lost) if parsed.lost else (first or RETURN_CODES[15])
    return Failure(GPU_LOST, f"no GPU could be read: {what}",
                   "GPU fell off the bus (Xid 79?): check `dmesg | grep -i xid`; reset or reboot",
                   code or None)


def _no_gpu_failure(code: int, first: str, _parsed: GpuStatus) -> Failure:
    return Failure(NO_GPU, first or "nvidia-smi listed no GPUs",
                   "no GPU visible: check `lspci | grep -i nvidia`, the VM's accelerator "
                   "settings, or the container's device access", code or None)


_NO_ROW_HANDLERS: dict[int, Callable[[int, str, GpuStatus], Failure]] = {
    9: _driver_failure,
    12: _driver_failure,
    18: _driver_failure,
    255: _nvml_failure,
    15: _lost_failure,
    6: _no_gpu_failure,
}


def _classify_generic(exit_code: int, stdout: str, stderr: str,
                      parsed: GpuStatus) -> Failure | None:
    first = _first_line(stdout) or _first_line(stderr)
    if exit_code == 0:
        if parsed.lost:
            return _lost_failure(0, first, parsed)
        if parsed.bad_lines and "no devices were found" not in stdout.lower():
            return Failure(BAD_OUTPUT,
                           f"nvidia-smi output not understood: {parsed.bad_lines[0][:160]}",
                           "unexpected nvidia-smi version or wrapper; run the command by hand")
        return _no_gpu_failure(0, first, parsed)
    meaning = RETURN_CODES.get(exit_code, "")
    hints = {
        2: "this nvidia-smi does not know a queried field (driver too old?)",
        4: "no permission to query the GPUs (container device access?)",
    }
    hint = hints.get(exit_code, f"nvidia-smi: {meaning}" if meaning else "see the output above")
    message = f"nvidia-smi exited {exit_code}" + (f": {first}" if first else "")
    return Failure(EXIT, message, hint, exit_code)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def probe(timeout: float | None = GPU_TIMEOUT_S, limits: HealthLimits = DEFAULT_LIMITS) -> Probe:
    """This module as a `cluster.probe.Probe`: `COMMAND`, `parse` (health judged against
    ``limits``, `cluster.gpu_health`), `classify`, and a command timeout (a wedged
    nvidia-smi is ``command-timeout``)."""
    limit = GPU_TIMEOUT_S if timeout is None else seconds(timeout, "timeout")
    parser = parse if limits == DEFAULT_LIMITS else partial(parse, limits=limits)
    return Probe("gpu-status", COMMAND, parser, classify, limit)
