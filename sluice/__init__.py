"""sluice: scheduled jobs and large batch work spread over a cluster of worker processes."""

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

__all__ = [
    "Alert",
    "App",
    "Cancelled",
    "ConfigError",
    "Context",
    "CronError",
    "LeaseLost",
    "LockNotAcquired",
    "PayloadError",
    "PipelineError",
    "Retry",
    "SluiceError",
    "StoreError",
    "UnknownJobError",
]
__version__ = "0.1.0"
