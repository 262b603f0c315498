"""PromQL templates with ``{{variable}}`` placeholders (Flagger's MetricTemplate).

Values are substituted as *label values*, so they are escaped for a double-quoted PromQL
string: a deployment named ``x"} or vector(1) #`` cannot change the query. ``window`` is
the one variable placed outside quotes (``[{{window}}]``); it must be a duration literal.
"""

from __future__ import annotations

import re

VARIABLES = ("track", "namespace", "deployment", "window")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_WINDOW = re.compile(r"^\d+(ms|s|m|h|d|w)(\d+(ms|s|m|h|d|w))*$")


def escape_label_value(value: str) -> str:
    """Escape ``value`` for use inside a double-quoted PromQL label matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def placeholders(template: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(template)}


def render(template: str, values: dict[str, str]) -> str:
    """Fill every placeholder; raise ValueError naming an unknown or missing variable."""
    unknown = placeholders(template) - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown template variable(s) {sorted(unknown)}; allowed: {list(VARIABLES)}")

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise ValueError(f"no value for template variable {{{{{name}}}}}")
        value = str(values[name])
        if name == "window":
            if not _WINDOW.match(value):
                raise ValueError(f"window must be a PromQL duration such as '5m', got {value!r}")
            return value
        return escape_label_value(value)

    return _PLACEHOLDER.sub(sub, template)
