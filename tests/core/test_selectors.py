"""Which matcher makes a gate query read no data: selectors parsed from rendered PromQL and
diagnosed against the series a Prometheus holds (a fake SeriesFinder here; the real one in
tests/flows/test_label_conventions.py)."""

from __future__ import annotations

import re

from phasegate import gates, selectors
from phasegate.selectors import Matcher, Selector

POD_RE = gates.pods_regex("bodhi-server")
STOCK = [  # what a ServiceMonitor gives each series
    {"__name__": "api_response_time_ms_bucket", "namespace": "bodhi", "pod": "bodhi-server-7d9c5b8f4-x2kqz",
     "container": "bodhi-server", "service": "bodhi-server", "endpoint": "http", "job": "bodhi-server",
     "instance": "10.0.0.1:8080", "le": "5.0"},
]


class Finder:
    def __init__(self, series: list[dict[str, str]]) -> None:
        self.all = series

    def _match(self, match: str) -> list[dict[str, str]]:
        (sel,) = selectors.selectors(match if "{" in match else match + "{}")
        out = []
        for s in self.all:
            if s["__name__"] != sel.metric:
                continue
            ok = True
            for m in sel.matchers:
                v = s.get(m.name, "")
                hit = re.fullmatch(m.value, v) is not None if "~" in m.op else v == m.value
                ok &= hit if m.op in ("=", "=~") else not hit
            if ok:
                out.append(s)
        return out

    def series(self, match: str) -> list[dict[str, str]]:
        return self._match(match)

    def label_values(self, label: str, match: str) -> list[str]:
        return sorted({s[label] for s in self._match(match) if label in s})


def test_selectors_are_found_with_regex_values_that_hold_braces_and_commas() -> None:
    q = (f'histogram_quantile(0.99, sum by (le) (rate(api_response_time_ms_bucket{{namespace="bodhi",'
         f'pod=~"{POD_RE}"}}[5m]))) / sum(up{{job="a,b}}"}}) + vector(0)')
    assert selectors.selectors(q) == [
        Selector("api_response_time_ms_bucket", (Matcher("namespace", "=", "bodhi"), Matcher("pod", "=~", POD_RE))),
        Selector("up", (Matcher("job", "=", "a,b}"),)),
    ]


def test_a_track_matcher_on_a_stock_install_is_named_with_the_labels_series_carry() -> None:
    sel = Selector("api_response_time_ms_bucket", (Matcher("namespace", "=", "bodhi"), Matcher("track", "=", "stable")))
    why = selectors.diagnose(Finder(STOCK), sel)
    assert why is not None
    assert why.startswith("track exists on no series of api_response_time_ms_bucket; its series carry container, "
                          "endpoint, instance, job, le, namespace, pod, service")
    assert "{{pods}}" in why


def test_a_value_that_no_series_has_lists_the_values_there_are() -> None:
    sel = Selector("api_response_time_ms_bucket", (Matcher("namespace", "=", "prod"),))
    assert selectors.diagnose(Finder(STOCK), sel) == (
        'no series has namespace="prod" among the series of api_response_time_ms_bucket; namespace there is: bodhi'
    )


def test_a_metric_without_series_and_a_selector_that_matches() -> None:
    assert "has no series at all" in (selectors.diagnose(Finder(STOCK), Selector("nope", ())) or "")
    ok = Selector("api_response_time_ms_bucket", (Matcher("namespace", "=", "bodhi"), Matcher("pod", "=~", POD_RE)))
    assert selectors.diagnose(Finder(STOCK), ok) is None


def test_labels_by_metric_for_doctor() -> None:
    found = dict(selectors.labels_by_metric(Finder(STOCK), ['sum(api_response_time_ms_bucket{namespace="x"})']))
    assert found == {"api_response_time_ms_bucket": ["container", "endpoint", "instance", "job", "le", "namespace",
                                                     "pod", "service"]}


def test_with_identity_labels_only_a_mismatch_of_whose_series_counts() -> None:
    finder = Finder([*STOCK, {"__name__": "http_requests_total", "namespace": "bodhi", "pod": "p", "code": "200"}])
    not_yet = Selector("http_requests_total", (Matcher("code", "=~", "5.."), Matcher("namespace", "=", "bodhi")))
    assert selectors.diagnose(finder, not_yet) is not None
    assert selectors.diagnose(finder, not_yet, selectors.IDENTITY) is None
    assert selectors.diagnose(finder, Selector("token_refresh_errors_total", ()), selectors.IDENTITY) is None
    wrong = Selector("http_requests_total", (Matcher("code", "=~", "5.."), Matcher("track", "=", "stable")))
    assert "track exists on no series" in (selectors.diagnose(finder, wrong, selectors.IDENTITY) or "")
