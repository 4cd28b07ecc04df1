"""``sluice outbox status`` and ``sluice outbox retry``, as argparse sub-commands.

The application's CLI calls ``add_outbox_commands(subparsers, load_outboxes)``; each command
stores its handler as ``func`` (``args.func(args) -> int``, the exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from sluice.outbox.outbox import Outbox

Loader = Callable[[], list[Outbox]]


def add_outbox_commands(subparsers: Any, load_outboxes: Loader) -> argparse.ArgumentParser:
    """Add ``outbox status [--json] [--table T]`` and ``outbox retry [ID ...] [--all]``."""
    parser = subparsers.add_parser("outbox", help="outbox backlog and parked messages")
    commands = parser.add_subparsers(dest="outbox_command", metavar="{status,retry}")
    commands.required = True

    status = commands.add_parser("status", help="pending, oldest age, parked, per-topic counts")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument("--table", help="only the outbox with this table name")
    status.set_defaults(func=lambda args: _status(args, load_outboxes))

    retry = commands.add_parser("retry", help="send parked or backing-off messages again now")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox message ids")
    retry.add_argument("--all", action="store_true", help="every parked or backing-off message")
    retry.add_argument("--table", help="the outbox the ids belong to (needed if several)")
    retry.set_defaults(func=lambda args: _retry(args, load_outboxes))
    return parser


def _select(load: Loader, table: str | None, err: TextIO) -> list[Outbox] | None:
    outboxes = load()
    if table is not None:
        outboxes = [o for o in outboxes if o.table == table]
        if not outboxes:
            print(f"no outbox with table {table!r}", file=err)
            return None
    if not outboxes:
        print("no outbox is configured in this app", file=err)
        return None
    return outboxes


def _status(args: argparse.Namespace, load: Loader) -> int:
    outboxes = _select(load, args.table, sys.stderr)
    if outboxes is None:
        return 2
    reports = [o.status() for o in outboxes]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return 0
    for r in reports:
        print(_format(r))
    return 0


def _format(r: dict[str, Any]) -> str:
    age = r["oldest_pending_age_seconds"]
    lines = [
        f"outbox {r['table']}",
        f"  pending  {r['pending']}  (in flight {r['in_flight']}, backing off {r['backing_off']})",
        f"  oldest   {'-' if age is None else f'{age:.1f}s'}",
        f"  parked   {r['parked']}",
    ]
    if r["topics"]:
        lines.append("  topic                              pending   parked")
        lines += [f"  {t:<32} {c['pending']:>9} {c['parked']:>8}" for t, c in r["topics"].items()]
    for b in r["blocked_keys"]:
        lines.append(
            f"  BLOCKED key {b['key']!r}: message {b['id']} ({b['topic']}) parked after "
            f"{b['attempts']} attempts: {b['last_error']}"
        )
    return "\n".join(lines)


def _retry(args: argparse.Namespace, load: Loader) -> int:
    if bool(args.ids) == bool(args.all):
        print("give message ids or --all (not both)", file=sys.stderr)
        return 2
    outboxes = _select(load, args.table, sys.stderr)
    if outboxes is None:
        return 2
    if args.ids and len(outboxes) > 1:
        print("several outboxes are configured: name one with --table", file=sys.stderr)
        return 2
    for o in outboxes:
        n = o.retry(None, all=True) if args.all else o.retry(args.ids)
        print(f"outbox {o.table}: {n} message(s) due now")
    return 0
