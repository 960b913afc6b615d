"""The benchmark's processes: CPU and memory from /proc, nginx, mcpproxy, the canned upstream.

Every process is started by this module with ``subprocess.Popen`` and stopped by its own pid (and
its process group, which it leads) — nothing is looked up or killed by name.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mcpproxy import native

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the given processes (every thread they ran, ended ones included), in seconds.

    Read from each process's CPU-time clock (``clock_getcpuclockid``: nanoseconds, every thread
    the process ever had). A sum over ``/proc/<pid>/task/*/schedstat``, as this read before,
    loses the time of a thread that ends: mcpproxy's stream threads (mcpproxy.web.offload) end
    with their stream. Where the clock cannot be read, utime + stime from ``/proc/<pid>/stat``
    (10 ms ticks: too coarse for short runs at low rates)."""
    total = 0.0
    fallback: list[int] = []
    for pid in pids:
        try:
            total += time.clock_gettime(process_clock(pid))
        except OSError:
            fallback.append(pid)
    return total + (stat_cpu_seconds(fallback) if fallback else 0.0)


def process_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU time (glibc's ``clock_getcpuclockid``: the kernel's
    ``CPUCLOCK_SCHED`` clock of a whole process)."""
    return ((~pid) << 3) | 2


def stat_cpu_seconds(pids: list[int]) -> float:
    """utime + stime (all threads) of the given processes, in seconds, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores; /proc/stat, idle and iowait excluded)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user / nice
    return (sum(values) - idle - guest) / CLK_TCK


@contextlib.contextmanager
def one_core(pids: list[int]) -> Iterator[int | None]:
    """Run the calling thread and every thread of ``pids`` on one core while the block runs,
    then give each thread back the cores it had; yields the core (None with a single core).

    On this VM waking a process on the other, idle vCPU costs about as much CPU as a streamed
    event's whole budget (a pipe ping-pong between two processes, eighteenth session: 47-60 us
    of CPU a wake-up across vCPUs, 5 us on one), and where each wake-up lands changes from call
    to call. On one core every target pays the same, smaller wake-up.
    """
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        yield None
        return
    core = min(allowed)
    processes = [os.getpid(), *pids]
    existing = set(threads(processes))
    saved: dict[int, set[int]] = {}
    for tid in (threading.get_native_id(), *threads(pids)):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, {core})
    try:
        yield core
    finally:
        for tid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)
        # a thread started meanwhile inherited the one core: it gets its main thread's cores
        for pid in processes:
            for tid in set(threads([pid])) - existing:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, saved.get(pid, allowed))


def threads(pids: list[int]) -> list[int]:
    """The thread ids of the given processes."""
    out: list[int] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.extend(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    return out


def self_cpu_seconds() -> float:
    """This process's CPU time plus that of its reaped children (wrk, ...), from /proc/self/stat."""
    raw = Path("/proc/self/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return res.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def code_measured() -> str:
    """The commit a report's figures were measured at, and whether ``mcpproxy/`` had changes."""
    dirty = [line for line in _git("status", "--porcelain", "mcpproxy").splitlines() if line.strip()]
    commit = f"commit `{_git('rev-parse', '--short', 'HEAD')}`"
    if dirty:
        return f"{commit} plus {len(dirty)} uncommitted change(s) under `mcpproxy/`."
    return f"{commit}, clean tree."


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "mcp": version("mcp"),
        "mcpproxy": version("mcpproxy"),
        "build": native.describe(),
    }
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"]), ("node", ["--version"])):
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
        if path is None:
            info[tool] = "not installed"
            continue
        try:
            res = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
            text = (res.stdout + res.stderr).strip().splitlines()
            info[tool] = text[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            info[tool] = "?"
    return info


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process, its children (nginx workers, forked proxy workers), and extra copies."""
        out: list[int] = []
        for p in (self.popen, *self.extra):
            out.append(p.pid)
            out.extend(children(p.pid))
        return out

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        for p in (*self.extra, self.popen):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
        for p in (*self.extra, self.popen):
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _spawn(
    name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_line(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd_name(proc)} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{cmd_name(proc)}: no {needle!r} within {timeout}s:\n{log.read_text()[-3000:]}")


def cmd_name(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)


def start_mcp(tmp: Path, mode: str) -> tuple[Proc, int]:
    """The test MCP server (see bench/mcp_server.py) in ``mode`` json or sse, on a free port."""
    log = tmp / f"mcp-{mode}.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.mcp_server",
        "--port",
        "0",
        "--mode",
        mode,
        "--no-record",
        "--exit-with-parent",
    ]
    popen = _spawn(f"mcp-{mode}", cmd, log, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    line = _wait_line(log, "READY ", popen, 20)
    port = int(line.strip().rsplit(":", 1)[1])
    return Proc(f"mcp-{mode}", popen, log), port


def start_canned(tmp: Path, big_bytes: int, flavor: str = "raw") -> tuple[Proc, int]:
    log = tmp / f"canned-{flavor}.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.canned",
        "--port",
        "0",
        "--big-bytes",
        str(big_bytes),
        "--flavor",
        flavor,
    ]
    popen = _spawn("canned", cmd, log, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    line = _wait_line(log, "READY ", popen, 15)
    port = int(line.rsplit(":", 1)[1])
    return Proc(f"canned-{flavor}", popen, log), port


def start_pump(tmp: Path, upstream_ports: dict[str, int]) -> tuple[Proc, dict[str, int]]:
    """The byte pump of bench/pump.py, one listening port per upstream: (process, name → port)."""
    log = tmp / "pump.log"
    names = list(upstream_ports)
    cmd = [sys.executable, "-m", "bench.pump"]
    for name in names:
        cmd += ["--to", str(upstream_ports[name])]
    popen = _spawn("pump", cmd, log, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    line = _wait_line(log, "READY ", popen, 15)
    listen = [int(pair.split(":")[0]) for pair in line.split()[1:]]
    return Proc("pump", popen, log), dict(zip(names, listen, strict=True))


def _get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_proxy(
    name: str, tmp: Path, config: dict[str, Any], *, workers: int = 1, mcpproxy: str | None = None
) -> tuple[Proc, str]:
    """``mcpproxy serve`` on ``config``; with ``workers`` > 1 and a proxy that does not fork its
    own workers, the benchmark starts that many copies on the same SO_REUSEPORT port. Returns the
    process and a note on how workers were run."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = mcpproxy or str(Path(sys.executable).with_name("mcpproxy"))
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = _spawn(name, [exe, "serve", "--config", str(path)], log, env)
    proc = Proc(name, popen, log)
    port = config["server"]["port"]
    _wait_ready(proc, port)
    note = "1 process"
    if workers > 1:
        time.sleep(0.5)
        forked = children(popen.pid)
        if forked:
            note = f"{len(forked)} workers forked by mcpproxy itself"
        else:
            for i in range(1, workers):
                extra_log = tmp / f"{name}.{i}.log"
                extra = _spawn(name, [exe, "serve", "--config", str(path)], extra_log, env)
                proc.extra.append(extra)
                _wait_line(extra_log, '"listening"', extra, 20)
            note = (
                f"{workers} copies of `mcpproxy serve` started by the benchmark on one SO_REUSEPORT "
                "port (mcpproxy does not fork workers itself)"
            )
    return proc, note


def _wait_ready(proc: Proc, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail(4000)}")
        with contextlib.suppress(OSError):
            status, _ = _get(f"http://127.0.0.1:{port}/readyz", 1)
            if status == 200:
                return
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready within {timeout}s:\n{proc.log_tail(4000)}")


def check_config(tmp: Path, name: str, config: dict[str, Any]) -> str | None:
    """``mcpproxy check``: None when the config is accepted, else the refusal."""
    path = tmp / f"{name}.check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = str(Path(sys.executable).with_name("mcpproxy"))
    res = subprocess.run([exe, "check", "--config", str(path)], capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        return None
    return (res.stderr or res.stdout).strip()[-600:]


def metrics_text(port: int) -> str:
    with contextlib.suppress(OSError):
        status, body = _get(f"http://127.0.0.1:{port}/metrics", 5)
        if status == 200:
            return body.decode(errors="replace")
    return ""


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def nginx_conf(tmp: Path, port: int, upstreams: dict[str, int], workers: int = 1) -> str:
    ups = "\n".join(
        f"  upstream {name} {{ server 127.0.0.1:{p}; keepalive 256; keepalive_requests 1000000; }}"
        for name, p in upstreams.items()
    )
    locations = "\n".join(f"    location /{name}/ {{ proxy_pass http://{name}/; }}" for name in upstreams)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log {tmp}/nginx-access.log;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  keepalive_requests 1000000;
{ups}
  server {{
    listen 127.0.0.1:{port} reuseport;
    client_max_body_size 10m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 300s;
    location = /__ready {{ return 200 "ok"; }}
    location = /__canned {{
      default_type application/json; return 200 '{{"jsonrpc":"2.0","id":1,"result":{{}}}}';
    }}
{locations}
  }}
}}
"""


def start_nginx(tmp: Path, upstreams: dict[str, int], workers: int = 1) -> tuple[Proc, int] | None:
    binary = nginx_binary()
    if binary is None:
        return None
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, port, upstreams, workers))
    log = tmp / "nginx.out"
    popen = _spawn(
        "nginx", [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")], log
    )
    proc = Proc("nginx", popen, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"nginx exited:\n{proc.log_tail()}\n{(tmp / 'nginx-error.log').read_text()}")
        with contextlib.suppress(OSError):
            if _get(f"http://127.0.0.1:{port}/__ready", 1)[0] == 200 and children(popen.pid):
                return proc, port
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("nginx did not become ready")
