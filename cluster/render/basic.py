"""Tables for the connectivity tasks: hosts, run, check, keyscan, ensure-key."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..hosts import Host, fold_names
from ..inventory import Inventory
from ..result import Outcome, Report
from .core import failure_text, host_table, status_cell
from .fold import EXPANDED_VIEW, FAILED, OK, BaseView, ViewOptions, failure_cell, failure_key, host_name, state_cell, view_table
from .levels import load_level, value_range
from .table import Cell, Column, TextTable, host_column
from .text import shown


def roles_table(inventory: Inventory, selected: list[Host]) -> Table:
    """Roles and their (folded) hosts, then the selected hosts."""
    rows = [(name, len(hosts), fold_names([str(h) for h in hosts]) or "—")
            for name, hosts in inventory.roles.items()]
    title = f"roles in {inventory.path}" if inventory.path else "no roles file"
    return host_table(["Role", ("Hosts", {"justify": "right"}), "Expanded"], rows, title=title)


def hosts_fields(inventory: Inventory) -> Any:
    def fields(outcome: Outcome) -> dict[str, Any]:
        return {"roles": inventory.roles_of(outcome.host)}

    return fields


# Latency bands of check (ms): hosts fold when both latencies are in the same band.
LATENCY_THRESHOLDS = (100, 1000)
CHECK_COLUMNS = (host_column(), Column("Status"), Column("Remote hostname / error", wrap=True, least=24),
                 Column("Connect", justify="right", drop=2),
                 Column("Command", justify="right", drop=1))


def _ms(value: float | None) -> str:
    return "local" if value is None else f"{value:.0f} ms"


class CheckView(BaseView):
    """check for `cluster.render.fold`: ok hosts fold by latency band (module LATENCY_THRESHOLDS)."""

    columns = CHECK_COLUMNS

    def state(self, outcome: Outcome) -> str:
        return OK if outcome.ok else FAILED

    def key(self, outcome: Outcome) -> Hashable | None:
        info = outcome.data
        if not outcome.ok or info is None:
            return failure_key(outcome) if not outcome.ok else None
        return (info.connect_ms is None, load_level(info.connect_ms, LATENCY_THRESHOLDS),
                load_level(info.command_ms, LATENCY_THRESHOLDS))

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        info = outcome.data
        status = state_cell(outcome, self.state(outcome))
        if outcome.ok and info is not None:
            return [[host_name(outcome), status, shown(info.hostname), _ms(info.connect_ms),
                     _ms(info.command_ms)]]
        return [[host_name(outcome), status, failure_cell(outcome), "", ""]]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        first = outcomes[0]
        if not first.ok or first.data is None:
            return self.rows(first)
        infos = [o.data for o in outcomes]
        names = fold_names([shown(i.hostname) for i in infos])
        connect = "local" if infos[0].connect_ms is None else \
            value_range(i.connect_ms for i in infos) + " ms"
        return [["", state_cell(first, OK), names, connect,
                 value_range(i.command_ms for i in infos) + " ms"]]


def check_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    """Remote hostname and latencies per host, folded when the fleet is tall."""
    return view_table(CheckView(), list(report), options)


def check_fields(outcome: Outcome) -> dict[str, Any]:
    return outcome.data.to_json() if outcome.ok and outcome.data is not None else {}


def keyscan_table(report: Report) -> Table:
    rows = []
    for outcome in report:
        info = outcome.data
        if outcome.ok and info is not None:
            status = Text(info.status, style="yellow" if info.status == "added" else "green")
            rows.append((str(outcome.host), status, info.key_type, info.fingerprint))
        else:
            rows.append((str(outcome.host), status_cell(outcome), "", failure_text(outcome)))
    return host_table(["Host", "Status", "Key type", "Fingerprint / error"], rows)


def keyscan_fields(outcome: Outcome) -> dict[str, Any]:
    return outcome.data.to_json() if outcome.ok and outcome.data is not None else {}


def print_key_report(report: Any, console: Console) -> None:
    style = "green" if report.ok else "bold red"
    console.print(Text(("key in use: " if report.ok else "no usable key: ") + report.description, style=style))
    if report.key_path:
        console.print(f"  file: {report.key_path}")
    for line in getattr(report, "keys", ()):
        console.print(f"  {line}", highlight=False, markup=False)
    for action in report.actions:
        console.print(f"  ran: {action}")
    if report.steps:
        console.print("To set up the key:")
        for step in report.steps:
            console.print(f"  {step}", highlight=False, markup=False)
