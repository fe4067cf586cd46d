"""System probe: ``vmstat`` samples, load average and memory in one round trip.

Pure module: command builder, parser, classification.

Command and output layout
-------------------------
``command(samples, interval)`` runs, under ``LC_ALL=C`` (English headers)::

    vmstat -n INTERVAL SAMPLES+1; rc=$?       # +1: the first row is the since-boot average
    echo '@@loadavg'; cat /proc/loadavg
    echo '@@meminfo'; grep MemTotal|MemFree|MemAvailable|Buffers|Cached|Swap... /proc/meminfo
    echo '@@nproc';   nproc
    exit $rc                                  # the host's exit code is vmstat's

``-y`` (drop the first row) is not used: procps before 4.0 lacks it, so the
parser drops the since-boot row itself. ``-n`` prints the header once, but
the parser skips repeated headers anywhere anyway. The seed's ``vmstat 2 15``
is ``command(samples=15, interval=2)`` (15 interval samples, ~30 s).

Parsing maps columns **by name** from the column-name line (first token
``r``), so procps 3.2 (16 columns, no ``st``), 3.3/4.0.0-4.0.3 (17) and
4.0.4+ (18, with ``gu``) all parse, as do ``-w``, ``-a`` (``inact``/``active``)
and ``-t`` (two trailing timestamp tokens). Rows of the wrong width or with
non-numeric cells go to ``bad_lines``; a translated header (non-C locale)
is reported, never a crash.

Failure kinds (`classify`)
--------------------------
``exit``        nonzero exit of vmstat (127: procps not installed).
``bad-output``  exit 0 but no interval sample could be parsed (header not
                found or not understood, e.g. a translated one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ParameterError
from .options import seconds
from .probe import Probe
from .result import EXIT, Failure

BAD_OUTPUT = "bad-output"
KINDS = (BAD_OUTPUT,)

LOADAVG_MARKER = "@@loadavg"
MEMINFO_MARKER = "@@meminfo"
NPROC_MARKER = "@@nproc"
_MARKERS = (LOADAVG_MARKER, MEMINFO_MARKER, NPROC_MARKER)
MEMINFO_KEYS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree")

# vmstat column name -> VmstatSample attribute ("in" is a Python keyword).
_ATTR = {"in": "in_"}
# Without these the row means nothing to the table; a header lacking them is not vmstat's C one.
REQUIRED_COLUMNS = ("r", "b", "free", "us", "sy", "id")
KNOWN_COLUMNS = ("r", "b", "swpd", "free", "buff", "cache", "inact", "active", "si", "so",
                 "bi", "bo", "in", "cs", "us", "sy", "id", "wa", "st", "gu")


def command(samples: int = 2, interval: int = 1) -> str:
    """The shell command for ``samples`` interval samples ``interval`` seconds apart."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ParameterError("samples", f"{{name}} must be a whole number >= 1, got {samples!r}")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ParameterError("interval", f"{{name}} must be a whole number of seconds >= 1, got {interval!r}")
    meminfo = "|".join(MEMINFO_KEYS)
    return (
        f"export LC_ALL=C; vmstat -n {interval} {samples + 1}; rc=$?; "
        f"echo '{LOADAVG_MARKER}'; cat /proc/loadavg; "
        f"echo '{MEMINFO_MARKER}'; grep -E '^({meminfo}):' /proc/meminfo; "
        f"echo '{NPROC_MARKER}'; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; "
        "exit $rc"
    )


def duration_s(samples: int = 2, interval: int = 1) -> int:
    """Seconds ``command(samples, interval)`` takes at least (size the command timeout on it)."""
    return samples * interval


# vmstat itself takes samples * interval seconds; this much more covers the
# connection, the shell start and a slow host without waiting forever.
TIMEOUT_MARGIN_S = 15.0


def probe(samples: int = 2, interval: int = 1, timeout: float | None = None) -> Probe:
    """This module as a `cluster.probe.Probe`: vmstat ``samples`` x ``interval`` s + load +
    memory. ``timeout`` defaults to the duration + `TIMEOUT_MARGIN_S`. Raises
    `ParameterError` for bad samples / interval / timeout."""
    text = command(samples, interval)  # validates samples and interval
    limit = duration_s(samples, interval) + TIMEOUT_MARGIN_S if timeout is None else seconds(timeout, "timeout")
    return Probe("sys-status", text, parse, classify, limit)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass
class VmstatSample:
    """One interval row of vmstat. Memory in KiB; cpu columns in percent.

    Columns the host's vmstat does not print (``st`` on procps 3.2, ``gu``
    before 4.0.4, ``buff``/``cache`` under ``-a``) are None.
    """

    r: int | None = None
    b: int | None = None
    swpd: int | None = None
    free: int | None = None
    buff: int | None = None
    cache: int | None = None
    inact: int | None = None
    active: int | None = None
    si: int | None = None
    so: int | None = None
    bi: int | None = None
    bo: int | None = None
    in_: int | None = None
    cs: int | None = None
    us: int | None = None
    sy: int | None = None
    id: int | None = None
    wa: int | None = None
    st: int | None = None
    gu: int | None = None
    timestamp: str | None = None  # "YYYY-MM-DD HH:MM:SS" with vmstat -t

    def get(self, column: str) -> int | None:
        """Value by vmstat column name (``in`` included)."""
        value: int | None = getattr(self, _ATTR.get(column, column))
        return value

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {c: self.get(c) for c in KNOWN_COLUMNS if self.get(c) is not None}
        if self.timestamp:
            doc["timestamp"] = self.timestamp
        return doc


@dataclass
class SystemSummary:
    """Means over the interval samples plus load and memory: one table row."""

    samples: int
    r: float | None
    b: float | None
    free_kib: float | None          # vmstat "free" (idle memory), mean
    mem_total_kib: int | None
    mem_available_kib: int | None
    mem_used_kib: int | None        # total - available (what applications hold)
    swap_used_kib: int | None
    si: float | None
    so: float | None
    bi: float | None
    bo: float | None
    in_: float | None
    cs: float | None
    us: float | None
    sy: float | None
    id: float | None
    wa: float | None
    st: float | None
    gu: float | None
    load: tuple[float, float, float] | None
    cpus: int | None

    def to_json(self) -> dict[str, Any]:
        doc = {f.name.rstrip("_"): getattr(self, f.name) for f in fields(self)}
        doc["load"] = list(self.load) if self.load else None
        return doc


@dataclass
class SystemStatus:
    """Everything the system command printed for one host."""

    samples: list[VmstatSample] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)   # vmstat's column names, as printed
    load: tuple[float, float, float] | None = None
    mem_total_kib: int | None = None
    mem_free_kib: int | None = None
    mem_available_kib: int | None = None
    buffers_kib: int | None = None
    cached_kib: int | None = None
    swap_total_kib: int | None = None
    swap_free_kib: int | None = None
    cpus: int | None = None
    boot_row_dropped: bool = False
    warnings: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)

    @property
    def mem_used_kib(self) -> int | None:
        """MemTotal - MemAvailable (total - free - buffers - cached on pre-3.14 kernels)."""
        if self.mem_total_kib is None:
            return None
        if self.mem_available_kib is not None:
            return self.mem_total_kib - self.mem_available_kib
        parts = (self.mem_free_kib, self.buffers_kib, self.cached_kib)
        if any(p is None for p in parts):
            return None
        return self.mem_total_kib - sum(parts)  # type: ignore[arg-type]

    def summary(self) -> SystemSummary:
        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": [s.to_json() for s in self.samples],
            "columns": list(self.columns),
            "load": list(self.load) if self.load else None,
            "mem_total_kib": self.mem_total_kib,
            "mem_available_kib": self.mem_available_kib,
            "mem_used_kib": self.mem_used_kib,
            "swap_total_kib": self.swap_total_kib,
            "swap_free_kib": self.swap_free_kib,
            "cpus": self.cpus,
            "summary": summarize(self).to_json(),
            "warnings": list(self.warnings),
            "bad_lines": list(self.bad_lines),
        }


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse(stdout: str, *, drop_first: bool = True) -> SystemStatus:
    """Parse the command's stdout (plain ``vmstat`` output works too).

    ``drop_first``: drop the first data row (vmstat's since-boot average);
    pass False for output of ``vmstat -y``.
    """
    sections = _split_sections(stdout)
    status = SystemStatus()
    _parse_vmstat(sections.get("vmstat", []), status, drop_first)
    _parse_loadavg(sections.get(LOADAVG_MARKER, []), status)
    _parse_meminfo(sections.get(MEMINFO_MARKER, []), status)
    _parse_nproc(sections.get(NPROC_MARKER, []), status)
    return status


def _split_sections(stdout: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"vmstat": []}
    current = sections["vmstat"]
    for raw in stdout.splitlines():
        line = raw.strip()
        if line in _MARKERS:
            current = sections.setdefault(line, [])
        elif line:
            current.append(line)
    return sections


class _Header:
    """The column-name line: names by position, plus whether rows carry a timestamp."""

    def __init__(self, tokens: list[str]) -> None:
        known = [t for t in tokens if t in KNOWN_COLUMNS]
        # With -t the line ends with the time zone (UTC, CEST...) over "date time".
        self.timestamped = len(tokens) == len(known) + 1 and tokens[-1] not in KNOWN_COLUMNS
        self.columns = tokens[:-1] if self.timestamped else tokens
        self.valid = (len(known) == len(self.columns) and len(set(known)) == len(known)
                      and all(c in known for c in REQUIRED_COLUMNS))

    @property
    def width(self) -> int:
        return len(self.columns) + (2 if self.timestamped else 0)


def _parse_vmstat(lines: list[str], status: SystemStatus, drop_first: bool) -> None:
    header: _Header | None = None
    rows_seen = 0
    for line in lines:
        tokens = line.split()
        if tokens[0] == "r":
            candidate = _Header(tokens)
            if not candidate.valid:
                status.bad_lines.append(line)
                status.warnings.append(
                    f"vmstat column names not understood (non-C locale?): {line}")
                header = None
                continue
            if not status.columns:
                status.columns = candidate.columns
            header = candidate
            continue
        if _is_group_line(tokens):
            continue  # "procs ---memory--- ..." (any language): carries no data
        sample = _parse_row(tokens, header) if header else None
        if sample is None:
            status.bad_lines.append(line)
            continue
        rows_seen += 1
        if drop_first and rows_seen == 1:
            status.boot_row_dropped = True
            continue
        status.samples.append(sample)


def _is_group_line(tokens: list[str]) -> bool:
    """vmstat's first header line: group names drawn with dashes."""
    return any("--" in t for t in tokens) and not tokens[0].isdigit()


def _parse_row(tokens: list[str], header: _Header) -> VmstatSample | None:
    if len(tokens) != header.width:
        return None
    cells = tokens[: len(header.columns)]
    if not all(c.isdigit() for c in cells):
        return None
    sample = VmstatSample()
    for name, cell in zip(header.columns, cells):
        setattr(sample, _ATTR.get(name, name), int(cell))
    if header.timestamped:
        sample.timestamp = " ".join(tokens[-2:])
    return sample


def _parse_loadavg(lines: list[str], status: SystemStatus) -> None:
    if not lines:
        return
    parts = lines[0].split()
    try:
        status.load = (float(parts[0]), float(parts[1]), float(parts[2]))
    except (IndexError, ValueError):
        status.bad_lines.append(lines[0])


def _parse_meminfo(lines: list[str], status: SystemStatus) -> None:
    targets = {"MemTotal": "mem_total_kib", "MemFree": "mem_free_kib",
               "MemAvailable": "mem_available_kib", "Buffers": "buffers_kib",
               "Cached": "cached_kib", "SwapTotal": "swap_total_kib", "SwapFree": "swap_free_kib"}
    for line in lines:
        key, _, rest = line.partition(":")
        value = rest.split()
        if key in targets and value and value[0].isdigit():
            setattr(status, targets[key], int(value[0]))  # /proc/meminfo is in kB (KiB)
        else:
            status.bad_lines.append(line)


def _parse_nproc(lines: list[str], status: SystemStatus) -> None:
    if lines and lines[0].isdigit():
        status.cpus = int(lines[0])
    elif lines:
        status.bad_lines.append(lines[0])


# ---------------------------------------------------------------------------
# Summary and classification
# ---------------------------------------------------------------------------


def summarize(status: SystemStatus) -> SystemSummary:
    """Mean of every column over the interval samples (None where vmstat lacks it)."""

    def mean(column: str) -> float | None:
        values = [v for s in status.samples if (v := s.get(column)) is not None]
        return round(sum(values) / len(values), 1) if values else None

    swap_used = None
    if status.swap_total_kib is not None and status.swap_free_kib is not None:
        swap_used = status.swap_total_kib - status.swap_free_kib
    return SystemSummary(
        samples=len(status.samples),
        r=mean("r"), b=mean("b"), free_kib=mean("free"),
        mem_total_kib=status.mem_total_kib, mem_available_kib=status.mem_available_kib,
        mem_used_kib=status.mem_used_kib, swap_used_kib=swap_used,
        si=mean("si"), so=mean("so"), bi=mean("bi"), bo=mean("bo"),
        in_=mean("in"), cs=mean("cs"),
        us=mean("us"), sy=mean("sy"), id=mean("id"), wa=mean("wa"), st=mean("st"), gu=mean("gu"),
        load=status.load, cpus=status.cpus,
    )


def classify(exit_code: int, stdout: str, stderr: str = "",
             parsed: SystemStatus | None = None) -> Failure | None:
    """The host's `Failure`, or None when at least one interval sample was read."""
    if parsed is None:
        parsed = parse(stdout)
    if exit_code == 127:
        return Failure(EXIT, "vmstat not found on this host",
                       "install procps (apt install procps / dnf install procps-ng)", 127)
    if exit_code != 0:
        detail = _last_line(stderr) or _last_line(stdout)
        return Failure(EXIT, f"vmstat exited {exit_code}" + (f": {detail}" if detail else ""),
                       "run `LC_ALL=C vmstat 1 2` on the host to see why", exit_code)
    if not parsed.samples:
        why = parsed.warnings[0] if parsed.warnings else (
            "no vmstat header found" if not parsed.columns else "no interval sample")
        return Failure(BAD_OUTPUT, f"vmstat output not understood: {why}",
                       "expected procps vmstat under LC_ALL=C; run `LC_ALL=C vmstat 1 2` there")
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
