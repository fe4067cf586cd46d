"""Host expressions: parsing, range expansion and folding. Pure: no I/O but ``@file`` reads.

Grammar (DESIGN.md "Host expressions"):

* items separated by commas and/or whitespace (commas inside ``[...]`` belong
  to the range);
* each item is ``[user@]name[:port]``; ``name`` may hold ClusterShell ranges
  (``10.8.0.[81-83]``, ``gpu[01-16]``);
* ``@path`` reads more items from a file (``#`` starts a comment);
* ``local`` is the controller itself, reached without SSH.

Order is kept and duplicates are dropped (first occurrence wins).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import HostExpressionError, quoted

LOCAL = "local"
# Bounds on what one expression may expand to (issue 14): a typo such as
# '127.[0-255].[0-255].[0-255]' or '@/dev/zero' is an error, not gigabytes of memory.
# roles.yaml `limits.max_hosts` raises or lowers the first (cluster.inventory).
MAX_HOSTS = 100_000
MAX_HOST_FILE_BYTES = 8 * 1024 * 1024

_USER_HOST_PORT = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<name>.+?)(?::(?P<port>\d+))?$")
_BRACKETED_V6 = re.compile(r"^(?:(?P<user>[^@\s]+)@)?\[(?P<name>[0-9a-fA-F:.]+)\](?::(?P<port>\d+))?$")


@dataclass(frozen=True, order=True)
class Host:
    """One target: a host name or address with optional user and port.

    ``str(host)`` gives the spelling a user would type back
    (``user@name:port``), which is also how hosts appear in output.
    """

    hostname: str
    user: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        return self.hostname == LOCAL

    def __str__(self) -> str:
        name = f"[{self.hostname}]" if ":" in self.hostname and self.port else self.hostname
        text = f"{self.user}@{name}" if self.user else name
        return f"{text}:{self.port}" if self.port else text


def parse_host(item: str) -> Host:
    """Parse one already-expanded item ``[user@]name[:port]``."""
    item = item.strip()
    match = _BRACKETED_V6.match(item)
    if not match:
        match = _USER_HOST_PORT.match(item)
        # A bare IPv6 address has several colons and no port shorthand.
        if match and item.count(":") > 1:
            user, _, rest = item.rpartition("@")
            return Host(rest, user or None, None)
        if match and ":" in match.group("name"):
            match = None  # one colon, no digits after it ('127.0.5.1:abc'): a bad port
    if not match or not match.group("name"):
        # One colon and no digits after it ('127.0.5.1:abc') is a bad port, not a name.
        raise HostExpressionError(f"bad host {quoted(item)}: expected [user@]host[:port] (port 1-65535)")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise HostExpressionError(f"bad port in {quoted(item)}: {port[:20]} is not in 1-65535")
    return Host(match.group("name"), match.group("user"), int(port) if port else None)


def split_items(expression: str) -> list[str]:
    """Split on commas/whitespace that are not inside ``[...]``."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    if depth:
        raise HostExpressionError(f"bad range in {quoted(expression)}: missing ']'")
    return items


class _Budget:
    """How many more hosts an expression may expand to (shared by its @files)."""

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def take(self, count: int, item: str) -> None:
        self.left -= count
        if self.left < 0:
            raise HostExpressionError(
                f"{quoted(item)} makes the selection more than {self.limit:,} hosts: a typo? "
                "(raise the cap with limits.max_hosts in the roles file)")


_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_RANGE_PART = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*(?:/\s*(\d+))?)?\s*")


def range_count(name: str) -> int:
    """How many names ``name``'s ranges expand to, counted without expanding them.

    (ClusterShell materialises a range as a set of integers: ``a[1-100000000]`` costs
    minutes and gigabytes before its length is known.) Overlapping parts are counted
    twice, so this is an upper bound; a part NodeSet would reject counts as one.
    """
    total = 1
    for body in _BRACKET.findall(name):
        count = 0
        for part in body.split(","):
            match = _RANGE_PART.fullmatch(part)
            if not match or match.group(2) is None:
                count += 1
                continue
            low, high, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1) or 1
            count += max(high - low, 0) // step + 1
        total *= max(count, 1)
    return total


def expand_item(item: str, budget: _Budget | None = None) -> list[str]:
    """Expand the ranges of one item, keeping ``user@`` and ``:port`` around them.

    A bracketed IPv6 address (``[::1]``, ``user@[::1]:2222``) is one host, not a
    range: it is recognised before anything reaches NodeSet.
    """
    budget = budget or _Budget(MAX_HOSTS)
    if "[" not in item or _BRACKETED_V6.match(item):
        budget.take(1, item)
        return [item]
    user, at, rest = item.partition("@") if "@" in item.split("[", 1)[0] else ("", "", item)
    name, port = rest, ""
    tail = re.search(r"\](:\d+)$", rest)
    if tail:
        name, port = rest[: tail.start() + 1], tail.group(1)
    from ClusterShell.NodeSet import NodeSet, NodeSetException
    from ClusterShell.RangeSet import RangeSetException

    budget.take(range_count(name), item)
    try:
        names = list(NodeSet(name))
    except (NodeSetException, RangeSetException) as exc:
        raise HostExpressionError(f"bad range in {quoted(item)}: {str(exc)[:200]}") from None
    prefix = f"{user}{at}"
    return [f"{prefix}{n}{port}" for n in names]


def parse_hosts(expression: str | Iterable[str], *, base_dir: Path | None = None,
                max_hosts: int = MAX_HOSTS, _seen_files: tuple[Path, ...] = (),
                _budget: _Budget | None = None) -> list[Host]:
    """Expand a host expression (or a list of them) into hosts, in order, no duplicates.

    More than ``max_hosts`` names (counted before any range is expanded) is an error.
    """
    budget = _budget or _Budget(max_hosts)
    texts = [expression] if isinstance(expression, str) else list(expression)
    hosts: list[Host] = []
    for text in texts:
        for item in split_items(str(text)):
            if item.startswith("@"):
                hosts.extend(_read_host_file(item[1:], base_dir, _seen_files, budget))
            else:
                hosts.extend(parse_host(name) for name in expand_item(item, budget))
    return unique(hosts)


def read_bounded_text(path: Path, limit: int, what: str) -> str:
    """The UTF-8 text of ``path``, reading at most ``limit`` bytes (``@/dev/zero`` ends).

    OSError as ``open`` raises it; ValueError with a one-line reason for a file too large
    or not UTF-8 (the roles file is read the same way).
    """
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _read_host_file(path_text: str, base_dir: Path | None, seen: tuple[Path, ...], budget: _Budget) -> list[Host]:
    if not path_text:
        raise HostExpressionError("bad host expression '@': a file path must follow '@'")
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.resolve() in seen:
        raise HostExpressionError(f"host file {path} includes itself")
    try:
        text = read_bounded_text(path, MAX_HOST_FILE_BYTES, "host file")
    except FileNotFoundError:
        raise HostExpressionError(f"host file not found: {path} (from '@{path_text}')") from None
    except OSError as exc:
        raise HostExpressionError(f"cannot read host file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise HostExpressionError(str(exc)) from None
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    try:
        return parse_hosts(lines, base_dir=path.parent, _seen_files=seen + (path.resolve(),), _budget=budget)
    except HostExpressionError as exc:
        raise HostExpressionError(f"{path}: {exc}") from None


def unique(hosts: Iterable[Host]) -> list[Host]:
    """Drop repeated hosts, keeping the first occurrence."""
    return list(dict.fromkeys(hosts))


def fold_names(names: Iterable[str]) -> str:
    """Fold host names into a compact range string (``127.0.1.[1-4]``), as clush does.

    Names that ClusterShell cannot fold (``user@host:port``) are listed as they are.
    """
    from ClusterShell.NodeSet import NodeSet, NodeSetException
    from ClusterShell.RangeSet import RangeSetException

    foldable: list[str] = []
    others: list[str] = []
    for name in names:
        (others if re.search(r"[@:\[\]]", name) else foldable).append(name)
    parts = []
    if foldable:
        try:
            parts.append(str(NodeSet.fromlist(_ranged(foldable))))
        except (NodeSetException, RangeSetException):
            parts.extend(foldable)
    return ",".join(parts + others)


_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def _ranged(names: list[str]) -> list[str]:
    """Names that differ only in a trailing number as one range each (``10.8.0.[81-90]``).

    Same result as folding the names one by one, but NodeSet then parses a few
    ranges instead of every name: 14x faster on 1,000 addresses.
    """
    from ClusterShell.RangeSet import RangeSet

    numbers: dict[str, list[str]] = {}
    rest = []
    for name in names:
        match = _TRAILING_NUMBER.match(name)
        if match:
            numbers.setdefault(match.group(1), []).append(match.group(2))
        else:
            rest.append(name)
    return [f"{prefix}[{RangeSet(','.join(nums))}]" for prefix, nums in numbers.items()] + rest
