"""inv preflight's output: hosts with the same verdict folded clush-style (failed first,
then warned, then ok), each non-ok check with its value and hint; then the consistency
view (``10.8.0.[81-87]  sglang 0.5.23`` / ``10.8.0.88  sglang 0.5.21  ✗``); then the
summary line (ok / warn / failed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group
from rich.text import Text

from ..hosts import fold_names
from ..preflight.checks import FAIL, OK, WARN, Check, HostResult
from ..result import Outcome, Report
from .table import Column, TextTable, host_column
from .text import shown

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}
_MARK = {WARN: "!", FAIL: "✗"}
COLUMNS = (host_column(), Column("Roles", drop=1), Column("Status"),
           Column("Checks (not ok: value → hint)", wrap=True, least=30))


def _status(outcome: Outcome) -> str:
    data = outcome.data
    if not outcome.ok and not (isinstance(data, HostResult) and data.checks):
        return outcome.error.kind if outcome.error else FAIL
    return data.status if isinstance(data, HostResult) else OK


def _detail(outcome: Outcome) -> tuple[Any, ...]:
    """What a row shows besides the host: hosts with equal details fold into one row
    (warnings are listed apart, folded by check, so they do not split the rows)."""
    data = outcome.data
    if isinstance(data, HostResult) and data.checks:
        bad = tuple((c.status, c.name, c.value, c.hint) for c in data.by_status(FAIL))
        return (_status(outcome), data.roles, bad, len(data.by_status(WARN)))
    error = outcome.error
    return (_status(outcome), data.roles if isinstance(data, HostResult) else (),
            (("error", error.kind, error.message, error.hint),) if error else (), 0)


def _checks_cell(items: Iterable[tuple[str, str, str, str]], warned: int) -> list[tuple[str, str]]:
    """Spans (text, style) for the table: one line per failing check, then the warning count."""
    spans: list[tuple[str, str]] = []
    for status, name, value, hint in items:
        if spans:
            spans.append(("\n", ""))
        spans.append((f"{_MARK.get(status, '✗')} {name}: ", _STYLE.get(status, "bold red")))
        spans.append((shown(value), ""))
        if hint:
            spans.append((f" → {shown(hint)}", "dim"))
    if warned:
        spans += [("\n", "")] if spans else []
        spans.append((f"{warned} warning{'s' if warned > 1 else ''} (below)", "yellow"))
    return spans or [("all checks ok", "green")]


def hosts_table(report: Report) -> TextTable:
    """One row per group of hosts with the same verdict and the same failing checks."""
    groups: dict[tuple[Any, ...], list[Outcome]] = {}
    for outcome in report:
        groups.setdefault(_detail(outcome), []).append(outcome)
    order = {FAIL: 0, WARN: 1, OK: 2}
    rows = []
    for detail, members in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], 0)):
        status, roles, bad, warned = detail
        names = fold_names([str(o.host) for o in members])
        count = f" ({len(members)})" if len(members) > 1 else ""
        rows.append([names + count, ",".join(roles) or "—", (status, _STYLE.get(status, "bold red")),
                     _checks_cell(bad, warned)])
    return TextTable(COLUMNS, rows)


def warnings_text(report: Report) -> Text:
    """Every warning, folded by check and hint: ``! gpu.xid  HOSTS  value → hint``."""
    groups: dict[tuple[str, str], list[tuple[str, Check]]] = {}
    for outcome in report:
        if isinstance(outcome.data, HostResult):
            for check in outcome.data.by_status(WARN):
                groups.setdefault((check.name, check.hint), []).append((str(outcome.host), check))
    text = Text()
    for (name, hint), members in groups.items():
        values = list(dict.fromkeys(c.value for _, c in members))
        value = values[0] + (f" (+{len(values) - 1} other values)" if len(values) > 1 else "")
        text.append(f"! {name:<13} ", style="yellow")
        text.append(f"{fold_names([h for h, _ in members]):<24} ")
        text.append(shown(value))
        if hint:
            text.append(f" → {shown(hint)}", style="dim")
        text.append("\n")
    return text


def consistency_text(views: list[dict[str, Any]]) -> Text:
    """Each fact that must match, folded: one line per value, the odd ones marked ✗."""
    text = Text()
    for view in views:
        label = view["fact"] + ("" if view["scope"] == "all" else f" ({view['scope']})")
        groups = view["groups"]
        if len(groups) == 1 and len(groups[0]["hosts"]) == 1:
            continue  # one host: nothing to compare
        for index, group in enumerate(groups):
            text.append(f"{label if index == 0 else '':<16}", style="bold")
            text.append(f"{fold_names(group['hosts']):<24} ")
            text.append(shown(group["value"]), style=None if group["ok"] else "bold red")
            if not group["ok"]:
                text.append("  ✗", style="bold red")
            text.append("\n")
    return text


def preflight_view(report: Report) -> Group:
    """The hosts table, then the consistency view (when there is something to compare)."""
    parts: list[Any] = [hosts_table(report)]
    warned = warnings_text(report)
    if warned:
        parts += [Text("warnings:", style="bold"), warned]
    consistency = consistency_text(report.extra.get("consistency") or [])
    if consistency:
        parts += [Text("must match across hosts:", style="bold"), consistency]
    return Group(*parts)


def summary(report: Report, elapsed: float) -> Text:
    """``N hosts: X ok, Y warn, Z failed in T s``."""
    counts = {OK: 0, WARN: 0, FAIL: 0}
    for outcome in report:
        status = _status(outcome)
        counts[status if status in counts else FAIL] += 1
    text = Text(f"{len(report)} hosts: ")
    text.append(f"{counts[OK]} ok", style="green")
    text.append(", ")
    text.append(f"{counts[WARN]} warn", style="yellow" if counts[WARN] else None)
    text.append(", ")
    text.append(f"{counts[FAIL]} failed", style="bold red" if counts[FAIL] else None)
    text.append(f" in {elapsed:.1f} s", style="dim")
    return text


def refusal_lines(failing: Iterable[tuple[Any, Check | Any]]) -> list[str]:
    """start-pd's refusal: one line per failing check, ``host  name: value → hint``."""
    lines = []
    for host, item in failing:
        if isinstance(item, Check):
            lines.append(f"{host}  {item.name}: {item.value}" + (f" → {item.hint}" if item.hint else ""))
        else:
            lines.append(f"{host}  {item.kind}: {item.message}" + (f" → {item.hint}" if item.hint else ""))
    return lines
