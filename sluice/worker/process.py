"""Running workers as processes: one in the foreground, or a supervisor over several.

SIGTERM or SIGINT drains: the node stops claiming, lets running work finish for up to
``drain_timeout`` seconds, hands back what is left and deregisters. A second signal hands back
at once. The supervisor forwards signals to its children and restarts a child that died.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from sluice.config import Settings

if TYPE_CHECKING:
    from sluice.app import App

log = logging.getLogger("sluice.worker")


def run_foreground(app: App, settings: Settings) -> None:
    from sluice.worker.worker import Worker

    worker = Worker(app, settings)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("signal %d: draining (up to %gs)", signum, settings.drain_timeout)
            worker.stop()
        else:
            log.info("second signal: handing back running work now")
            worker.settings = worker.settings.with_(drain_timeout=0.001)
            worker.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    worker.run()


def exit_now(code: int = 0) -> None:
    """Leave the process at once after a drain: handler threads that ignored cancellation
    were handed back already, and the interpreter would otherwise wait for them at exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def supervise(argv: list[str], processes: int, metrics_port: int | None = None) -> int:
    """Run ``processes`` copies of ``sluice worker`` (argv without --processes) until signalled.
    With ``metrics_port``, child i serves its metrics on ``metrics_port + i``."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def spawn(i: int) -> subprocess.Popen[bytes]:
        extra = ["--metrics-port", str(metrics_port + i)] if metrics_port else []
        return subprocess.Popen([sys.executable, "-m", "sluice", *argv, *extra])

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children.extend(spawn(i) for i in range(processes))
    log.info("supervisor: %d worker processes started", processes)
    while not stopping.is_set():
        for i, child in enumerate(children):
            code = child.poll()
            if code is not None and not stopping.is_set():
                log.warning("worker process %d exited with %s; restarting", child.pid, code)
                time.sleep(1.0)
                children[i] = spawn(i)
        stopping.wait(0.5)
    for child in children:
        try:
            child.wait()
        except KeyboardInterrupt:
            child.kill()
    return 0
