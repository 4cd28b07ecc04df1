"""Outbox test fixtures; they live in ``outbox_helpers`` with the helpers the tests import."""

from outbox_helpers import (  # noqa: F401 - fixtures are found by name in this module
    engine,
    nats_proxy,
    nats_stream,
    pg_engine,
    rabbit,
    redis_prefix,
    redis_proxy,
    sqlite_engine,
)
