"""sluice: scheduled jobs and large batch work spread over a cluster of worker processes."""

from sluice import publishers
from sluice.alerts import Alert
from sluice.app import App
from sluice.context import Context
from sluice.errors import (
    Cancelled,
    ConfigError,
    CronError,
    LeaseLost,
    LockNotAcquired,
    PayloadError,
    PipelineError,
    Retry,
    SluiceError,
    StoreError,
    UnknownJobError,
)
from sluice.outbox import Outbox, after_commit
from sluice.pipeline.pipeline import Pipeline, Shard
from sluice.pipeline.tablesource import TableSource, mark_pending

__all__ = [
    "Alert",
    "App",
    "Cancelled",
    "ConfigError",
    "Context",
    "CronError",
    "LeaseLost",
    "LockNotAcquired",
    "Outbox",
    "PayloadError",
    "Pipeline",
    "PipelineError",
    "Retry",
    "Shard",
    "SluiceError",
    "StoreError",
    "TableSource",
    "UnknownJobError",
    "after_commit",
    "mark_pending",
    "publishers",
]
__version__ = "0.1.0"
