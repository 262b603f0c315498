"""Durations as people write them in plans: ``30s``, ``5m``, ``48h``, ``2d``, ``1w``, ``1h30m``.

Kept strict on purpose: a bare number is refused (is ``5`` seconds or minutes?), and so is
a unit Prometheus would read differently (``M``, ``y``).
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m`` style text; raise ValueError with the accepted form on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '30s', '5m', '48h' or '1w', got {text!r}")
    s = text.strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"expected a duration such as '30s', '5m', '48h' or '1w', got {text!r}")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    """Shortest exact text for ``td`` in the units above (``90s`` → ``1m30s``)."""
    ms = round(td.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800_000), ("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def promql_duration(seconds: float) -> str:
    """A PromQL range literal for ``seconds``, rounded to whole milliseconds, at least 1ms."""
    ms = max(1, round(seconds * 1000))
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
