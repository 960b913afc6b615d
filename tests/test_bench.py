"""The benchmark's own arithmetic (bench/run.py): the CPU checks compare targets round by round;
and its pinning of the streaming row (bench/infra.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.infra import cpu_seconds, one_core
from bench.profiling import python_frame, summarize
from bench.run import STREAM, Row, first_events_later, medians, paired


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


def test_paired_takes_the_median_of_a_round_measured_more_than_once() -> None:
    rows = [_row("nginx", 1, 20), _row("p3", 1, 40), _row("p3", 1, 60), _row("p3", 1, 44)]
    assert paired(rows, "canned", 64, "p3", "nginx", lambda a, b: a / b) == [2.2]


def test_a_first_event_is_compared_with_the_direct_sample_just_before_it() -> None:
    def stream_row(target: str, rnd: int, ttfe_ms: float, direct_ms: float | None = None) -> Row:
        row = _row(target, rnd, 50.0, workload=STREAM, conc=1)
        row.extra["ttfe_ms"] = ttfe_ms
        if direct_ms is not None:
            row.extra["paired_direct_ttfe_ms"] = direct_ms
        return row

    rows = [
        stream_row("direct", 1, 2.0),
        stream_row("p4", 1, 2.5, 2.0),
        stream_row("direct", 1, 3.0),  # later in the round the VM slowed: both samples moved
        stream_row("p3", 1, 3.25, 3.0),
        stream_row("direct", 2, 2.0),
        stream_row("p4", 2, 2.0, 2.0),
        stream_row("p4", 3, 9.0),  # no direct sample before it: nothing to compare with
        _row("p4", 4, 50.0),  # another workload
    ]
    assert first_events_later(rows, "p4") == [0.5, 0.0]
    assert first_events_later(rows, "p3") == [0.25]
    assert first_events_later(rows, "p1") == []


def test_a_paired_rate_is_the_median_of_ratios_to_the_direct_sample_just_before() -> None:
    def rate_row(target: str, rnd: int, rps: float, direct_rps: float | None = None) -> Row:
        row = _row(target, rnd, 30.0)
        row.rps = rps
        if direct_rps is not None:
            row.extra["paired_direct_rps"] = direct_rps
        return row

    rows = [
        rate_row("direct", 1, 90_000),
        rate_row("p3", 1, 30_000, 90_000),
        rate_row("direct", 1, 60_000),  # direct's rate swung; the next row is compared with it
        rate_row("nginx", 1, 30_000, 60_000),
        rate_row("direct", 2, 80_000),
        rate_row("p3", 2, 24_000, 80_000),
        rate_row("direct", 3, 70_000),
        rate_row("p3", 3, 28_000, 70_000),
    ]
    med = medians(rows)
    assert med[("canned", 64, "p3")]["ratio_all"] == [0.333, 0.3, 0.4]
    assert med[("canned", 64, "p3")]["ratio"] == 1 / 3
    assert med[("canned", 64, "nginx")]["ratio"] == 0.5
    assert med[("canned", 64, "direct")]["rps"] == 75_000  # the median of every direct sample
    # rows measured without a paired sample keep the ratio of medians
    unpaired = medians([rate_row("direct", 1, 80_000), rate_row("p3", 1, 20_000)])
    assert unpaired[("canned", 64, "p3")]["ratio"] == 0.25
    assert "ratio_all" not in unpaired[("canned", 64, "p3")]


def test_compiled_frames_count_as_the_python_they_were_compiled_from(tmp_path: Path) -> None:
    assert python_frame("CPyDef_relay____Exchange___end", "__native_mcpproxy.c") == (
        "_Exchange.end",
        "mcpproxy/web/relay.py",
    )
    assert python_frame("CPyDef_upstream_auth___UpstreamCredential___value_now", "x.c") == (
        "UpstreamCredential.value_now",
        "mcpproxy/upstream_auth.py",
    )
    assert python_frame("CPyDef_unknown___f", "x.c") == ("CPyDef_unknown___f", "x.c")
    assert python_frame("uv__read", "stream.c") == ("uv__read", "stream.c")
    loop = "run (asyncio/runners.py:190);uv__read (stream.c:1154)"
    collapsed = tmp_path / "native.raw"
    collapsed.write_text(
        f"{loop};CPyPy_relay___CallerConnection___data_received (__native_mcpproxy.c:1);"
        "CPyDef_relay___CallerConnection___data_received (__native_mcpproxy.c:2);"
        "CPyDef_http1___parse_request_head (__native_mcpproxy.c:3);PyUnicode_New (unicodeobject.c:9) 3\n"
        f"{loop};CPyDef_logs___encode_access (__native_mcpproxy.c:4) 1\n"
    )
    summary = summarize(collapsed)
    categories = dict(summary["categories"])
    assert categories["mcpproxy: relay (web/relay.py, web/upstream.py, http1.py)"] == 3
    assert categories["structlog / logging (access log)"] == 1
    inclusive = dict(summary["inclusive"])
    assert inclusive["CallerConnection.data_received (mcpproxy/web/relay.py)"] == 3  # wrapper and body: once
    assert dict(summary["self_py"])["parse_request_head (mcpproxy/http1.py)"] == 3


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores to choose from")
def test_one_core_pins_every_thread_of_a_process_and_gives_each_its_cores_back() -> None:
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    me = threading.get_native_id()
    done = threading.Event()
    bystander = threading.Thread(target=done.wait, args=(10,))
    bystander.start()  # another thread of this process, there before the block: left alone
    assert bystander.native_id is not None
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        own = {max(os.sched_getaffinity(0))}
        os.sched_setaffinity(tids[1], own)  # threads with their own set of cores
        os.sched_setaffinity(bystander.native_id, own)
        before = {tid: os.sched_getaffinity(tid) for tid in (me, *tids)}
        late: list[int] = []
        with one_core([child.pid]) as core:
            assert core is not None
            assert all(os.sched_getaffinity(tid) == {core} for tid in (me, *tids))
            assert os.sched_getaffinity(bystander.native_id) == own
            started = threading.Thread(target=lambda: (late.append(threading.get_native_id()), done.wait(10)))
            started.start()  # inherits the one core from this thread
            while not late:
                time.sleep(0.001)
            assert os.sched_getaffinity(late[0]) == {core}
        assert {tid: os.sched_getaffinity(tid) for tid in (me, *tids)} == before
        assert os.sched_getaffinity(late[0]) == before[me]  # given this process's cores
        assert os.sched_getaffinity(bystander.native_id) == own
    finally:
        done.set()
        child.kill()
        child.wait()


def test_cpu_seconds_counts_the_time_of_threads_that_have_ended() -> None:
    """A child burns 0.3 s of CPU in a thread that then ends: the benchmark's reading of the
    child's CPU counts it (a sum over the threads still there counted almost none of it)."""
    code = (
        "import threading, time\n"
        "def burn():\n"
        "    t = time.thread_time()\n"
        "    while time.thread_time() - t < 0.3: pass\n"
        "t = threading.Thread(target=burn); t.start(); t.join()\n"
        "print('ended', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ended\n"
        assert len(os.listdir(f"/proc/{child.pid}/task")) == 1  # the burning thread is gone
        assert cpu_seconds([child.pid]) >= 0.3
    finally:
        child.kill()
        child.wait()
