"""The demo's application: remind users of expiring coupons, 25 shard tables on SQLite.

Run by ``sluice demo`` in worker processes; ``SLUICE_DEMO_DATA`` names the coupon database.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import create_engine, event

import sluice

DATA = os.environ.get("SLUICE_DEMO_DATA", ".sluice-demo/coupons.db")
SHARDS = [f"{i:02d}" for i in range(25)]


def coupon_engine(path: str):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


app = sluice.App(heartbeat=0.5, node_ttl=3.0, lease_ttl=5.0, drain_timeout=5.0)
coupons = sluice.TableSource(coupon_engine(DATA), "coupon_{shard}", shards=SHARDS)
remind = app.pipeline("remind_expiring_coupons", source=coupons, batch=500, chunk_size=100,
                      max_attempts=5)


@remind.execute
def send_reminder(ctx: sluice.Context, coupon: dict) -> None:
    # Stands in for a call to a push-notification service: about a millisecond each.
    time.sleep(0.001)
