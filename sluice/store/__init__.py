"""The coordination store: one port (``Store``), two databases (SQLite, PostgreSQL)."""

from sluice.store.rows import ClaimedTask, Counts, Firing, Outcome, TaskPlan
from sluice.store.store import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "ClaimedTask", "Counts", "Firing", "Outcome", "Store", "TaskPlan"]
