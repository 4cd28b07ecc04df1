"""Test helpers: wait on conditions with deadlines, run worker processes, read event logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} "
                                 f"(last value: {value!r})")
        time.sleep(interval)


def events(path: Path) -> list[dict[str, Any]]:
    """Lines appended by test apps (one JSON object per line; appends are atomic)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(path: str | os.PathLike[str], **event: Any) -> None:
    line = json.dumps(event) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class WorkerProcess:
    """``sluice worker`` as a real OS process."""

    def __init__(self, app: str, db_url: str, env: dict[str, str] | None = None,
                 args: list[str] | None = None, log: Path | None = None) -> None:
        full_env = {**os.environ, "SLUICE_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        self.log_path = log
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice", "worker", app, *(args or [])],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextmanager
def workers(app: str, db_url: str, count: int, **kwargs: Any) -> Iterator[list[WorkerProcess]]:
    procs = [WorkerProcess(app, db_url, **kwargs) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            p.terminate()


@contextmanager
def worker_thread(app: Any, **settings: Any) -> Iterator[Any]:
    """An in-process worker (a thread): quick policy tests share one interpreter with it."""
    from sluice.worker.worker import Worker

    worker = Worker(app, app.settings.with_(**settings))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=40)
