"""Tables for the connectivity tasks: hosts, run, check, keyscan, ensure-key."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..hosts import Host, fold_names
from ..inventory import Inventory
from ..result import Outcome, Report
from .core import failure_text, host_table, status_cell


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


def check_table(report: Report) -> Table:
    rows = []
    for outcome in report:
        info = outcome.data
        if outcome.ok and info is not None:
            connect = f"{info.connect_ms:.0f} ms" if info.connect_ms is not None else "local"
            rows.append((str(outcome.host), status_cell(outcome), info.hostname, connect,
                         f"{info.command_ms:.0f} ms"))
        else:
            rows.append((str(outcome.host), status_cell(outcome), failure_text(outcome), "", ""))
    return host_table(["Host", "Status", "Remote hostname / error", ("Connect", {"justify": "right"}),
                       ("Command", {"justify": "right"})], rows)


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


def run_fields(outcome: Outcome) -> dict[str, Any]:
    return {"exit_code": outcome.exit_code, "stdout": outcome.stdout, "stderr": outcome.stderr,
            "elapsed_s": round(outcome.elapsed, 3)}


def print_key_report(report: Any, console: Console) -> None:
    style = "green" if report.ok else "bold red"
    console.print(Text(("key in use: " if report.ok else "no usable key: ") + report.description, style=style))
    if report.key_path:
        console.print(f"  file: {report.key_path}")
    for action in report.actions:
        console.print(f"  ran: {action}")
    if report.steps:
        console.print("To set up the key:")
        for step in report.steps:
            console.print(f"  {step}", highlight=False, markup=False)
