"""Shared pieces of the benchmarks: the machine line, throw-away PostgreSQL databases,
worker processes and /proc readings. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the machine -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def pg_version() -> str:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return f"PostgreSQL {row[0]}" if row else "PostgreSQL ?"
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable ({exc.__class__.__name__})"


def cpu_times() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (Linux; zeros
    elsewhere). Busy is every process's time, the database's included; steal is time the
    hypervisor gave to other guests, a sign that figures of this run are low."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def machine_line() -> str:
    return (f"machine: {_cpu_model()}, {os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, {pg_version()}, "
            f"SQLite {sqlite3.sqlite_version}; load average at start "
            f"{os.getloadavg()[0]:.2f}")


# -- throw-away PostgreSQL databases -------------------------------------------------------


def _url_for(db: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{db}"


@contextlib.contextmanager
def pg_database(tag: str) -> Iterator[str]:
    """Create a fresh database, yield its URL, drop it afterwards (even on failure)."""
    name = f"sluice_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- processes ---------------------------------------------------------------------------


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._out = open(log, "ab")  # noqa: SIM115
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code


def sluice_worker(app: str, db_url: str, log: Path, env: dict[str, str] | None = None,
                  args: list[str] | None = None) -> Proc:
    """``sluice worker APP`` as its own OS process (the command a user runs)."""
    return Proc([sys.executable, "-m", "sluice", "worker", app, *(args or [])],
                {"SLUICE_DATABASE_URL": db_url, **(env or {})}, log)


@contextlib.contextmanager
def processes(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for p in procs:
            if p.alive():
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            p.stop()


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far of a process (all its threads), or of one of its threads
    (its native id)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else
                f"/proc/{pid}/task/{thread}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL process on this machine (server and backends)."""
    seconds = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    seconds[int(entry.name)] = cpu_seconds(int(entry.name))
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    return seconds


class PostgresCpu:
    """PostgreSQL's CPU seconds over a stretch of time: read every quarter second, so that a
    backend whose connection closes before the end still counts (but its last moments)."""

    def __init__(self) -> None:
        self._start = _postgres_cpu()
        self._last = dict(self._start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            self._last.update(_postgres_cpu())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._last.update(_postgres_cpu())
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())

    def by_application(self, url: str) -> dict[str, float]:
        """CPU seconds so far of the backends still connected, by their application_name."""
        with psycopg.connect(url, autocommit=True) as conn:
            names = dict(conn.execute("SELECT pid, application_name FROM pg_stat_activity "
                                      "WHERE backend_type = 'client backend'").fetchall())
        now = _postgres_cpu()
        out: dict[str, float] = {}
        for pid, name in names.items():
            if pid in now:
                out[name or "?"] = out.get(name or "?", 0.0) + now[pid] - self._start.get(pid, 0)
        return out


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- events and figures --------------------------------------------------------------------


def append_event(path: str, **event: Any) -> None:
    """One JSON line with one write on an O_APPEND descriptor (atomic across processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def wait_until(cond: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
