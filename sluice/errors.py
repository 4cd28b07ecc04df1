"""One exception tree for everything sluice raises.

Messages say what was wrong and what to do about it. Control-flow exceptions (``Retry``,
``Cancelled``) are not errors and are not logged as such.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every exception sluice raises on purpose."""


class ConfigError(SluiceError, ValueError):
    """A declaration or setting is invalid; raised where it is declared, before anything runs."""


class CronError(ConfigError):
    """A cron expression cannot be parsed; the message names the field and what is allowed."""


class StoreError(SluiceError):
    """The coordination store failed or holds something unexpected."""


class SchemaError(StoreError):
    """The store's schema is newer than this sluice, or a migration failed."""


class UnknownJobError(SluiceError, LookupError):
    """A job or pipeline name that no registered job carries."""


class LockNotAcquired(SluiceError):
    """A lock could not be acquired within the time allowed."""


class LeaseLost(SluiceError):
    """The lease on a task, record or lock expired or was taken over: the work must stop.

    Raised when a completion or renewal presents a fencing token that is no longer current.
    """


class PipelineError(SluiceError):
    """A pipeline layer (split, load, execute) broke its contract; the message names the layer."""


class PayloadError(SluiceError, TypeError):
    """A payload or record is not JSON-serialisable; sluice never pickles."""


class PublishError(SluiceError):
    """A broker did not acknowledge a message."""


class Retry(SluiceError):
    """Raise from a handler to ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "", delay: float | None = None) -> None:
        super().__init__(message or "retry requested")
        self.delay = delay


class Cancelled(SluiceError):
    """Raised inside a handler whose run was cancelled (``overlap="replace"``, shutdown)."""
