"""``sluice outbox status`` and ``sluice outbox retry`` through argparse."""

from __future__ import annotations

import argparse
import json

import pytest
from outbox_helpers import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from sluice.outbox import Outbox
from sluice.outbox.cli import add_outbox_commands


def _cli(outboxes: list[Outbox], *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sluice")
    add_outbox_commands(parser.add_subparsers(dest="command"), lambda: outboxes)
    args = parser.parse_args(argv)
    return args.func(args)


def test_status_and_retry(sqlite_engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    pub = Collector(fail=lambda m: True)
    ob = Outbox(sqlite_engine, pub, max_attempts=1)
    with Session(sqlite_engine) as s, s.begin():
        ob.put(s, topic="order.paid", key="o1", payload=1, ordered=True)
        ob.put(s, topic="order.paid", key="o1", payload=2, ordered=True)
    ob.relay(owner="n")

    assert _cli([ob], "outbox", "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pending"] == 1 and report["parked"] == 1
    assert report["topics"] == {"order.paid": {"pending": 1, "parked": 1}}
    assert report["blocked_keys"][0]["key"] == "o1"

    assert _cli([ob], "outbox", "status") == 0
    text = capsys.readouterr().out
    assert "parked   1" in text and "BLOCKED key 'o1'" in text and "order.paid" in text

    assert _cli([ob], "outbox", "retry") == 2
    assert _cli([ob, ob], "outbox", "retry", "1") == 2  # several outboxes: --table needed
    assert _cli([ob], "outbox", "retry", "1") == 0
    assert "1 message(s) due now" in capsys.readouterr().out
    pub.fail = None
    ob.relay(owner="n")
    assert [m.json() for m in pub.messages] == [1, 2]
    assert _cli([ob], "outbox", "retry", "--all", "--table", "sluice_outbox") == 0
    assert _cli([ob], "outbox", "status", "--table", "nope") == 2
