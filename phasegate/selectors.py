"""Why a gate query reads no data: which of its label matchers match no series.

A plan written for one labelling convention (``track="stable"``) run against another (a
stock kube-prometheus: ``namespace``, ``pod``, ``container``, ``service``, ``endpoint``,
``job``, ``instance``) reads no data everywhere, and no trigger can fire. Preflight and
``phasegate doctor`` ask Prometheus which matcher is to blame, the way a person would:
``/api/v1/series`` for the metric alone, then with one matcher more at a time, and
``/api/v1/label/<name>/values`` for the values that do exist.

Design decisions:

* The vector selectors are found by a small scanner, not a regex: label values are quoted
  strings that may hold ``{``, ``}`` and ``,`` (a ``{{pods}}`` regex has ``{1,10}``).
* Pure: Prometheus is the ``SeriesFinder`` Protocol (``ports``); the adapter implements it.
* One message per selector, naming the first matcher that empties the match and what the
  series carry instead, with a hint where the cause is the usual one (``track`` or
  ``deployment`` on a stock install: select by pod name with ``{{pods}}``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from phasegate.ports import SeriesFinder

_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:"
_NAME_CHARS = _NAME_START + "0123456789"
_OPS = ("=~", "!~", "!=", "=")
# Labels a pipeline adds that a stock prometheus-operator does not.
_NOT_STOCK = {"track": "{{pods}}", "deployment": "{{pods}} (or {{workload}} for mesh metrics)"}
_MAX_VALUES = 8
# Labels that say *whose* series it is (discovery's, and the usual track conventions'), as
# opposed to what the application says about an event (``code``, ``type``, ``le``). A child
# of the latter appears on its first event, so its absence before a deploy is no mismatch.
IDENTITY = frozenset({
    "namespace", "pod", "container", "service", "endpoint", "job", "instance",
    "track", "deployment", "pod_template_hash", "destination_workload", "workload",
})


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def text(self, count: int | None = None) -> str:
        chosen = self.matchers if count is None else self.matchers[:count]
        return self.metric + ("{" + ",".join(str(m) for m in chosen) + "}" if chosen else "")

    def __str__(self) -> str:
        return self.text()


def _string(text: str, i: int) -> tuple[str, int]:
    """The quoted string starting at ``text[i]``, unescaped, and the index after it."""
    quote, out, i = text[i], [], i + 1
    while i < len(text) and text[i] != quote:
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
            out.append({"n": "\n", "t": "\t"}.get(text[i], text[i]))
        else:
            out.append(text[i])
        i += 1
    return "".join(out), i + 1


def _matchers(text: str, i: int) -> tuple[tuple[Matcher, ...], int]:
    """The matchers of a ``{...}`` block whose ``{`` is at ``text[i]``."""
    found: list[Matcher] = []
    i += 1
    while i < len(text):
        while i < len(text) and text[i] in " \t\n,":
            i += 1
        if i >= len(text) or text[i] == "}":
            return tuple(found), i + 1
        start = i
        while i < len(text) and text[i] in _NAME_CHARS:
            i += 1
        name = text[start:i]
        while i < len(text) and text[i] == " ":
            i += 1
        op = next((o for o in _OPS if text.startswith(o, i)), None)
        if not name or op is None:
            return tuple(found), i + 1
        i += len(op)
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] not in "\"'`":
            return tuple(found), i
        value, i = _string(text, i)
        found.append(Matcher(name, op, value))
    return tuple(found), i


def selectors(promql: str) -> list[Selector]:
    """Every ``metric{...}`` vector selector in ``promql``, in order, without repeats."""
    out: list[Selector] = []
    i = 0
    while i < len(promql):
        c = promql[i]
        if c in "\"'`":
            _, i = _string(promql, i)
            continue
        if c in _NAME_START and (i == 0 or promql[i - 1] not in _NAME_CHARS):
            start = i
            while i < len(promql) and promql[i] in _NAME_CHARS:
                i += 1
            name = promql[start:i]
            j = i
            while j < len(promql) and promql[j] == " ":
                j += 1
            if j < len(promql) and promql[j] == "{":
                matchers, i = _matchers(promql, j)
                selector = Selector(name, matchers)
                if selector not in out:
                    out.append(selector)
            continue
        i += 1
    return out


def _labels_of(series: Sequence[Mapping[str, str]]) -> list[str]:
    return sorted({k for s in series for k in s if k != "__name__"})


def diagnose(finder: SeriesFinder, selector: Selector, identity: frozenset[str] | None = None) -> str | None:
    """Why ``selector`` matches no series, or None if it matches some.

    With ``identity`` (label names that say whose series it is), only a mismatch of those is
    reported: a metric without series, or a value of an event label (``code="500"``) that
    has not occurred, may simply not have happened yet."""
    every = finder.series(selector.metric)
    if not every:
        if identity is not None:
            return None
        return f"{selector.metric} has no series at all (not exported, not scraped, or no event yet)"
    if identity is not None:
        selector = Selector(selector.metric, tuple(m for m in selector.matchers if m.name in identity))
    labels = _labels_of(every)
    for n, matcher in enumerate(selector.matchers, 1):
        if matcher.name not in labels and matcher.op in ("=", "=~") and matcher.value:
            hint = f": select by pod name with {_NOT_STOCK[matcher.name]}" if matcher.name in _NOT_STOCK else ""
            return (f"{matcher.name} exists on no series of {selector.metric}; its series carry "
                    f"{', '.join(labels)}{hint}")
        if not finder.series(selector.text(n)):
            values = finder.label_values(matcher.name, selector.text(n - 1))
            shown = ", ".join(values[:_MAX_VALUES]) + (f" (and {len(values) - _MAX_VALUES} more)"
                                                       if len(values) > _MAX_VALUES else "")
            where = f" among the series of {selector.text(n - 1)}"
            return f"no series has {matcher}{where}; {matcher.name} there is: {shown or '(none)'}"
    return None


def diagnose_query(finder: SeriesFinder, promql: str, identity: frozenset[str] | None = None) -> list[str]:
    """One line per selector of ``promql`` that matches nothing (see ``diagnose``)."""
    return [f"{s}: {why}" for s in selectors(promql) if (why := diagnose(finder, s, identity)) is not None]


def labels_by_metric(finder: SeriesFinder, promqls: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    """For each metric the queries read, the label names its series carry (doctor --plan)."""
    seen: set[str] = set()
    for promql in promqls:
        for s in selectors(promql):
            if s.metric not in seen:
                seen.add(s.metric)
                yield s.metric, _labels_of(finder.series(s.metric))
