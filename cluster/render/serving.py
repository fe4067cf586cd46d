"""start-pd / restart-pd / stop-pd / pd-status output: tables, live progress, dry-run text.

start-pd, restart-pd and pd-status print one row per server node-rank (then the router),
with the host it runs on (``Outcome.data``: `cluster.serving.records.ServerRecord`);
stop-pd one row per host. Failed rows carry the failure kind in the status column and
message + hint in Notes; a server that died (or never became ready) also gets its last
log lines under the table. The JSON documents are the reports' own
(`cluster.result.Report.to_dict`).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import PurePosixPath
from typing import Any, Sequence

from rich.console import Group, RenderableType
from rich.text import Text

from ..result import Outcome, Report
from ..serving.records import ServerRecord
from ..serving.start import RestartResult, StartResult
from ..serving.stop import HostStop
from .core import duration as _seconds
from .core import failure_text, host_table
from .fold import EXPANDED_VIEW, FAILED, OK, WARN, BaseView, ViewOptions, host_name, to_cell, view_table
from .table import Cell, Column, host_column
from .text import shown

GOOD = {"ready", "healthy", "running", "started"}
BUSY = {"planned", "starting", "loading", "waiting"}
QUIET = {"not started", "dry-run", "stopped"}


def _status_text(status: str, outcome: Outcome | None = None) -> Text:
    if outcome is not None and not outcome.ok and outcome.error is not None:
        # A generic status says less than the failure kind (env-file, port-busy...).
        generic = status in GOOD or status in ("failed", "planned", "not started")
        return Text(outcome.error.kind if generic else status, style="bold red")
    style = "green" if status in GOOD else "yellow" if status in BUSY else "dim" if status in QUIET else "red"
    return Text(status, style=style)


def _role(row: ServerRecord | None) -> str:
    if row is None:
        return "—"
    if row.nnodes > 1:
        return f"{row.role} {row.server_index} rank {row.node_rank}"
    return row.role


def _host(row: ServerRecord | None, outcome: Outcome | None = None) -> str:
    if row is None:  # a selected host with nothing recorded
        return outcome.host.hostname if outcome else "—"
    return row.target if row.target == "local" else row.host


# --------------------------------------------------------------------------- start-pd

START_COLUMNS = ("Role", "Host", ("Port", {"justify": "right"}), ("PID", {"justify": "right"}),
                 "Status", ("Ready after", {"justify": "right"}), "Log", "Notes")


def start_row(outcome: Outcome) -> list[Any]:
    row: ServerRecord = outcome.data
    return [_role(row), _host(row), row.port, row.pid, _status_text(row.status, outcome),
            _seconds(row.ready_after_s), PurePosixPath(row.log_path).name if row.pid else "—",
            failure_text(outcome)]


def start_table(report: Report) -> RenderableType:
    return host_table(START_COLUMNS, [start_row(o) for o in report])


def log_tails(report: Report) -> list[RenderableType]:
    """The last log lines of every row that has them (died / not ready)."""
    out: list[RenderableType] = []
    for outcome in report:
        row: ServerRecord = outcome.data
        if not row.log_tail:
            continue
        header = Text(f"── {row.label} ({row.status}): last {len(row.log_tail)} lines of "
                      f"{row.log_path}", style="bold")
        body = Text("\n".join("  " + line for line in row.log_tail), style="dim")
        out += [header, body]
    return out


def start_view(result: StartResult) -> RenderableType:
    """The final start-pd output: table, log tails, and what to do next."""
    return _servers_view(result.report, start_notes(result))


def _servers_view(report: Report, notes: list[str]) -> RenderableType:
    parts: list[RenderableType] = [start_table(report), *log_tails(report)]
    return Group(*parts, *[Text(line, style="dim") for line in notes])


def start_notes(result: StartResult) -> list[str]:
    """One-line hints under the table, by how far the start got."""
    notes = []
    if result.stage == "preflight":
        notes.append("Nothing was started on any host.")
    elif result.stage in ("launch", "wait", "router"):
        if any(o.data.pid for o in result.report if o.data is not None):
            notes.append("The servers that started are left running: inspect them with "
                         "`inv pd-status` / `inv logs`, stop them with `inv stop-pd`.")
        else:
            notes.append("No server started.")
    dirs = sorted({str(PurePosixPath(o.data.log_path).parent) for o in result.report if o.data.log_path})
    if dirs and result.stage != "preflight":
        notes.append(f"Logs (and pid files) on each host in {', '.join(dirs)}")
    if result.manifest_file:
        notes.append(f"Deployment '{result.plan.deployment}' (run {result.plan.run_id}) recorded in "
                     f"{result.manifest_file}")
    if result.stage == "done" and result.router_url:
        notes.append(f"Router: {result.router_url}")
    return notes


def restart_view(result: RestartResult) -> RenderableType:
    """The final restart-pd output: the restarted servers, log tails, what was left alone."""
    return _servers_view(result.report, restart_notes(result))


def restart_notes(result: RestartResult) -> list[str]:
    """One-line notes under the restart-pd table."""
    notes = []
    if not len(result.report):
        notes.append("Nothing to restart: every recorded server is running "
                     "(name hosts with -H or --role to restart those).")
    if result.stage == "stop":
        notes.append("The old processes would not stop: nothing was started.")
    if result.kept:
        notes.append(f"Left alone: {len(result.kept)} process(es) ({', '.join(result.kept[:6])}"
                     + (" …" if len(result.kept) > 6 else "") + ")")
    if result.router:
        notes.append(f"Router: {result.router}")
    if result.manifest_file:
        notes.append(f"Deployment '{result.manifest.name}' updated in {result.manifest_file}")
    return notes


def progress_view(rows: Sequence[ServerRecord], elapsed: float) -> RenderableType:
    """The live stderr view while start-pd waits: one line per server."""
    table = host_table(("Role", "Host", ("Port", {"justify": "right"}), "Status",
                        ("Elapsed", {"justify": "right"}), "Last log line"),
                       [[_role(r), _host(r), r.port, _status_text(r.status),
                         _seconds(r.ready_after_s if r.ready_after_s is not None else r.uptime_s),
                         Text(shown((r.last_log or "")[:100]), style="dim")] for r in rows])
    ready = sum(1 for r in rows if r.status in GOOD)
    return Group(Text(f"start-pd: {ready}/{len(rows)} ready · {_seconds(elapsed)} · Ctrl-C stops "
                      "waiting (the servers keep running)", style="bold"), table)


def dry_run_text(scripts: Sequence[tuple[ServerRecord, str]]) -> str:
    """What --dry-run prints: per process, where it runs and its exact (masked) script."""
    blocks = []
    for row, script in scripts:
        where = "the controller (local)" if row.target == "local" else row.target
        blocks.append(f"# ===== {_role(row)} on {where}, port {row.port}\n{script.rstrip()}\n")
    return "\n".join(blocks)


# --------------------------------------------------------------------------- stop-pd

STOP_COLUMNS = ("Host", "Status", "Stopped", "Stopped pids", "Leftovers killed", "Ports free",
                "GPU memory after", "Notes")


def _pids(pids: Sequence[int], limit: int = 8) -> str:
    if not pids:
        return "—"
    shown = " ".join(str(p) for p in pids[:limit])
    return shown + (f" …+{len(pids) - limit}" if len(pids) > limit else "")


def _ports_cell(stop: HostStop) -> Text:
    if not stop.ports:
        return Text("—")
    busy = [p for p, free in stop.ports.items() if not free]
    if busy:
        return Text("busy: " + " ".join(map(str, busy)), style="bold red")
    return Text("yes (" + " ".join(map(str, stop.ports)) + ")", style="green")


def _gpu_cell(stop: HostStop) -> Text:
    after = stop.gpu
    if after is None:
        return Text("—")
    if not after.available:
        return Text(after.note or "unknown", style="dim")
    text = Text(f"{after.memory_used_mib} / {after.memory_total_mib} MiB",
                style="yellow" if after.processes else "green")
    if after.processes:
        text.append(f", {len(after.processes)} process(es)", style="yellow")
    return text


def _leftovers_cell(stop: HostStop) -> Text:
    if not stop.leftovers:
        return Text("none", style="dim")
    names = ", ".join(f"{pid} {cmdline.split()[0] if cmdline else ''}" for pid, cmdline in stop.leftovers[:4])
    more = f" …+{len(stop.leftovers) - 4}" if len(stop.leftovers) > 4 else ""
    return Text(names + more, style="yellow")


def stop_row(outcome: Outcome) -> list[Any]:
    stop: HostStop = outcome.data
    how = {"term": "SIGTERM", "kill": "SIGKILL after grace", "mixed": "SIGTERM/SIGKILL"}.get(stop.how, "")
    status = Text("ok", style="green") if outcome.ok else Text(outcome.error.kind if outcome.error else
                                                              "failed", style="bold red")
    stopped = ", ".join(stop.servers) or "nothing recorded"
    if stop.servers and not stop.stopped_pids:
        stopped += " (not running)"
    if stop.pid_reused:
        stopped += f" (pid {_pids(stop.pid_reused)} reused by another process: not signalled)"
    notes = failure_text(outcome)
    if how:
        notes = Text(how + (f" in {stop.seconds} s" if stop.seconds is not None else ""), style="dim") \
            if outcome.ok else notes
    return [str(outcome.host), status, stopped, _pids(stop.stopped_pids), _leftovers_cell(stop),
            _ports_cell(stop), _gpu_cell(stop), notes]


def stop_table(report: Report) -> RenderableType:
    return host_table(STOP_COLUMNS, [stop_row(o) for o in report])


# --------------------------------------------------------------------------- pd-status

STATUS_COLUMNS = (
    Column("Role"), host_column(), Column("Port", justify="right", drop=3),
    Column("PID", justify="right", drop=4), Column("Status"), Column("Alive", drop=5),
    Column("Listening", drop=6), Column("Health", drop=2),
    Column("Uptime", justify="right", drop=7),
    Column("Last log line / notes", wrap=True, drop=1, short="Notes", least=30),
)


def _yes_no(value: bool | None) -> Text:
    if value is None:
        return Text("—", style="dim")
    return Text("yes", style="green") if value else Text("no", style="red")


def _health_cell(row: ServerRecord) -> Text:
    if row.health is None:
        return Text("—", style="dim")
    what = "ready " if row.role == "router" else ""
    code = str(row.health) if row.health else "no answer"
    return Text(what + code, style="green" if row.health == 200 else "yellow" if row.health == 503 else "red")


def _notes(outcome: Outcome) -> Text:
    row: ServerRecord | None = outcome.data
    text = Text()
    if row is None:
        return failure_text(outcome)
    if row.workers is not None:
        healthy = sum(1 for w in row.workers if w.get("is_healthy"))
        text.append(f"workers {healthy}/{len(row.workers)} healthy", style="green" if healthy == len(
            row.workers) else "red")
        text.append("  ")
    if row.last_log:
        text.append(shown(row.last_log[:120]), style="dim")
    if outcome.error is not None:
        if text:
            text.append("\n")
        text.append_text(failure_text(outcome))
    return text


def status_row(outcome: Outcome) -> list[Any]:
    row: ServerRecord | None = outcome.data
    if row is None:  # a selected host with nothing recorded
        return ["—", _host(row, outcome), "—", None, _status_text("none", outcome), _yes_no(None),
                _yes_no(None), Text("—", style="dim"), "—", _notes(outcome)]
    return [_role(row), _host(row), row.port or "—", row.pid, _status_text(row.status, outcome),
            _yes_no(row.alive), _yes_no(row.listening), _health_cell(row), _seconds(row.uptime_s),
            _notes(outcome)]


def server_state(outcome: Outcome) -> str:
    """``failed``; ``warn`` while a server is still starting (not ready yet); ``ok``."""
    if not outcome.ok:
        return FAILED
    row: ServerRecord | None = outcome.data
    return WARN if row is not None and (row.status in BUSY or row.health == 503) else OK


class PdStatusView(BaseView):
    """pd-status for `cluster.render.fold`: one row per server; equal servers fold by role."""

    columns = STATUS_COLUMNS
    host_index = 1
    fold_warned = True  # servers still loading fold by role and status

    def name(self, outcome: Outcome) -> str:
        return shown(_host(outcome.data)) if outcome.data is not None else host_name(outcome)

    def state(self, outcome: Outcome) -> str:
        return server_state(outcome)

    def key(self, outcome: Outcome) -> Hashable | None:
        row: ServerRecord | None = outcome.data
        if row is None or not outcome.ok or row.workers is not None:
            return None  # failed servers and the router: their own rows
        # Loading servers fold with each other (fold_warned), never with ready ones: the
        # status and health are part of the key.
        return (row.role, row.nnodes, row.node_rank, row.port, row.status, row.alive,
                row.listening, row.health)

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        return [[to_cell(cell) for cell in status_row(outcome)]]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        rows = [o.data for o in outcomes]
        cells = self.rows(outcomes[0])[0]
        first = rows[0]
        cells[0] = first.role if first.nnodes == 1 else f"{first.role} rank {first.node_rank}"
        cells[3] = f"{sum(1 for r in rows if r.pid)} pids"
        uptimes = [r.uptime_s for r in rows if r.uptime_s is not None]
        low, high = (_seconds(min(uptimes)), _seconds(max(uptimes))) if uptimes else ("—", "—")
        cells[8] = low if low == high else f"{low}–{high}"
        logs = {r.last_log for r in rows}
        cells[9] = (shown(first.last_log[:120]), "dim") if len(logs) == 1 and first.last_log else ""
        return [cells]


def status_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> RenderableType:
    """One row per server (and the router); equal servers folded when the table is tall."""
    return view_table(PdStatusView(), list(report), options, noun="server")


