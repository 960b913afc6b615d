"""The benchmark's own arithmetic (bench/run.py): the CPU checks compare targets round by round."""

from __future__ import annotations

from bench.run import STREAM, Row, first_event_ms, paired


def _row(target: str, rnd: int, cpu_us: float, workload: str = "canned", conc: int = 64) -> Row:
    return Row(workload, conc, target, rnd, 1000, 0, 1.0, 1000.0, 1.0, 2.0, cpu_us / 1000, cpu_us, 0.0)


def test_paired_compares_rows_of_the_same_round_only() -> None:
    rows = [
        _row("p2", 0, 100),
        _row("p3", 0, 120),
        _row("p2", 1, 200),  # the VM ran at half speed in this round: both rows moved
        _row("p3", 1, 230),
        _row("p3", 2, 999),  # no p2 row in round 2: nothing to pair with
        _row("p2", 3, 50, conc=1),  # another concurrency
        _row("p3", 3, 80, workload="tool call (JSON)"),  # another workload
    ]
    assert paired(rows, "canned", 64, "p3", "p2", lambda a, b: a - b) == [20, 30]
    assert paired(rows, "canned", 64, "p3", "p2", lambda a, b: a / b) == [1.2, 1.15]
    assert paired(rows, "canned", 64, "p4", "p2", lambda a, b: a - b) == []


def test_paired_compares_first_events_of_the_same_round() -> None:
    def stream_row(target: str, rnd: int, ttfe_ms: float) -> Row:
        row = _row(target, rnd, 50.0, workload=STREAM, conc=1)
        row.extra["ttfe_ms"] = ttfe_ms
        return row

    rows = [
        stream_row("direct", 1, 2.0),
        stream_row("p4", 1, 2.5),
        stream_row("direct", 2, 3.0),  # a slow round: direct and proxy later together
        stream_row("p4", 2, 3.25),
    ]
    assert paired(rows, STREAM, 1, "p4", "direct", lambda a, b: a - b, metric=first_event_ms) == [0.5, 0.25]
