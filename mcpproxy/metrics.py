"""A minimal Prometheus text-format registry: counters, gauges and histograms with labels.

Kept in-process and dependency-free because the hot path increments a few counters per request;
label values are always route names, methods, statuses or outcomes — never credentials.

Metrics are updated and rendered on the event loop's thread only (the process runs no other
threads; ``server.workers`` are processes with registries of their own), so there is no lock: it
cost a third of every increment. The hot path passes label values as a tuple in the declared
order (:meth:`Counter.add`, :meth:`Histogram.observe_at`), which saves building a keyword dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import itemgetter

LabelKey = tuple[str, ...]

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Iterable[str]) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self._pick = _picker(self.labels)

    def _key(self, values: dict[str, str]) -> LabelKey:
        try:
            return self._pick(values)
        except KeyError:  # a label left out counts as ""
            return tuple([values.get(label, "") for label in self.labels])

    def _label_text(self, key: LabelKey, extra: str = "") -> str:
        parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Cell:
    """One series' value: updated in place, so an update is one dictionary lookup (compiled, the
    float is held unboxed: no float object a request either)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._cells: dict[LabelKey, _Cell] = {}

    def inc(self, amount: int = 1, **labels: str) -> None:
        self.add(self._key(labels), amount)

    def add(self, key: LabelKey, amount: float = 1) -> None:
        """:meth:`inc` with the label values given in the declared order."""
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell()
        cell.value += amount

    def value(self, **labels: str) -> float:
        cell = self._cells.get(self._key(labels))
        return 0.0 if cell is None else cell.value

    def render(self) -> list[str]:
        items = sorted(self._cells.items())
        return [f"{self.name}{self._label_text(k)} {_num(c.value)}" for k, c in items]


class Gauge(Counter):
    kind = "gauge"

    def dec(self, amount: int = 1, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Iterable[str] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = buckets
        self._series: dict[LabelKey, _Series] = {}

    def observe(self, value: float, **labels: str) -> None:
        self.observe_at(self._key(labels), value)

    def observe_at(self, key: LabelKey, value: float) -> None:
        """:meth:`observe` with the label values given in the declared order."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self.buckets) + 1)
        series.counts[_bucket(self.buckets, value)] += 1
        series.total += value

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return 0 if series is None else sum(series.counts)

    def render(self) -> list[str]:
        lines: list[str] = []
        items = sorted((k, list(s.counts), s.total) for k, s in self._series.items())
        for key, counts, total in items:
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _num(bound)
                bucket_label = self._label_text(key, f'le="{le}"')
                lines.append(f"{self.name}_bucket{bucket_label} {running}")
            lines.append(f"{self.name}_sum{self._label_text(key)} {_num(total)}")
            lines.append(f"{self.name}_count{self._label_text(key)} {running}")
        return lines


class _Series:
    """One histogram series: a count per bucket (and one past the last), and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.total = 0.0


class Registry:
    def __init__(self) -> None:
        self.requests = Counter(
            "mcpproxy_requests_total",
            "Requests answered, by route, HTTP method, MCP method and status.",
            ("route", "http_method", "mcp_method", "status"),
        )
        self.upstream_latency = Histogram(
            "mcpproxy_upstream_latency_seconds",
            "Time from sending a request upstream to receiving its response headers.",
            ("route",),
        )
        self.open_streams = Gauge(
            "mcpproxy_open_streams", "Streaming (SSE) responses currently relayed.", ("route",)
        )
        self.offloaded_streams = Counter(
            "mcpproxy_offloaded_streams_total",
            "Streaming (SSE) responses handed to a thread of their own (server.stream_threads).",
            ("route",),
        )
        self.upstream_errors = Counter(
            "mcpproxy_upstream_errors_total",
            "Upstream failures by route and kind (connect, timeout, reset, limit).",
            ("route", "kind"),
        )
        self.rejections = Counter(
            "mcpproxy_rejections_total",
            "Requests refused by the proxy itself, by route and reason.",
            ("route", "reason"),
        )
        self.exchanges = Counter(
            "mcpproxy_token_exchanges_total",
            "Token endpoint requests by route, grant kind and outcome.",
            ("route", "kind", "outcome"),
        )
        self.exchange_latency = Histogram(
            "mcpproxy_token_exchange_latency_seconds",
            "Token endpoint round-trip time.",
            ("route", "kind"),
        )
        self.cache = Counter(
            "mcpproxy_token_cache_total",
            "Token cache lookups by route and result (hit, miss, negative, shared_hit).",
            ("route", "result"),
        )
        self.all: list[_Metric] = [
            self.requests,
            self.upstream_latency,
            self.open_streams,
            self.offloaded_streams,
            self.upstream_errors,
            self.rejections,
            self.exchanges,
            self.exchange_latency,
            self.cache,
        ]

    def add(self, metric: _Metric) -> None:
        self.all.append(metric)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all:
            lines.extend(metric.header())
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def _picker(labels: LabelKey) -> Callable[[dict[str, str]], LabelKey]:
    """The label values in order, as a tuple (``itemgetter``: a fifth of a generator's cost on
    a path that runs several times a request)."""
    if not labels:
        return lambda _: ()
    if len(labels) == 1:
        one = labels[0]
        return lambda values: (values[one],)
    pick: Callable[[dict[str, str]], LabelKey] = itemgetter(*labels)
    return pick


def _bucket(bounds: tuple[float, ...], value: float) -> int:
    """The index of the first bound at or above ``value`` (``len(bounds)`` past the last), as
    ``bisect_left`` finds it: compiled, a scan of the dozen bounds costs less than the call."""
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
