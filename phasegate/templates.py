"""PromQL templates with ``{{variable}}`` placeholders (Flagger's MetricTemplate).

Values are substituted as *label values*, so they are escaped for a double-quoted PromQL
string: a deployment named ``x"} or vector(1) #`` cannot change the query. Two variables
are placed outside quotes: ``window`` (``[{{window}}]``), which must be a duration literal,
and ``selector``, which phasegate builds itself from validated label names and escaped
values (``gates.selector``), never from a caller's free text.

Variables (values per track, from ``gates.variables``):

* ``namespace``, ``deployment``, ``window`` — where and over what range.
* ``pods`` — a regex matching exactly the track's pods by name, which every scraped series
  carries (the ``pod`` label prometheus-operator sets): ``pod=~"{{pods}}"``. No
  configuration needed, as Flagger's built-in templates do it.
* ``workload`` — the track's Deployment name, for mesh metrics (Istio's
  ``destination_workload``, Linkerd's ``deployment``).
* ``pod_template_hash`` — the track's current ReplicaSet hash (Argo's podTemplateHashValue),
  for pipelines that copy the ``pod-template-hash`` pod label onto series.
* ``track`` — ``stable`` / ``canary``, for pipelines that put a ``track`` label on series.
* ``selector`` — the plan's own ``labels:`` convention for the track, as matchers.
"""

from __future__ import annotations

import re

VARIABLES = ("track", "namespace", "deployment", "window", "pods", "workload", "pod_template_hash", "selector")
# Substituted verbatim: their values are PromQL syntax, not label values.
_RAW = frozenset({"window", "selector"})
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
        if name == "window" and not _WINDOW.match(value):
            raise ValueError(f"window must be a PromQL duration such as '5m', got {value!r}")
        return value if name in _RAW else escape_label_value(value)

    return _PLACEHOLDER.sub(sub, template)
