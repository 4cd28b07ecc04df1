"""Child processes for the multi-process outbox tests, run as ``python outbox_procs.py ...``.

``relay URL EXCHANGE OWNER LEASE``: relay to RabbitMQ until SIGTERM (or SIGKILL).
``crash URL N``: commit N unordered messages whose after-commit send never completes (the
publisher blocks), print their ids as one JSON line, then wait to be killed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from sluice import publishers
from sluice.outbox import Outbox

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def relay(url: str, exchange: str, owner: str, lease: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pub = publishers.RabbitMQ(AMQP_URL, exchange=exchange, declare=False, timeout=2.0)
    ob = Outbox(create_engine(url), pub, lease=float(lease), backoff=(0.1, 0.5))
    ob.run_relay_forever(stop, every=0.05, batch=100, owner=owner)


def crash(url: str, n: str) -> None:
    never = threading.Event()
    ob = Outbox(create_engine(url), publishers.Callable(lambda m: never.wait()), lease=1.0)
    engine = create_engine(url)
    ids = []
    for i in range(int(n)):
        with Session(engine) as s, s.begin():
            ids.append(ob.put(s, topic="crash.test", key=f"k{i}", payload={"i": i}))
    print(json.dumps(ids), flush=True)
    never.wait()


if __name__ == "__main__":
    {"relay": relay, "crash": crash}[sys.argv[1]](*sys.argv[2:])
