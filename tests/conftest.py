"""Shared fixtures: real services only.

PostgreSQL tests get a fresh database each (created from ``template0``, dropped afterwards);
SQLite tests get a file in a temporary directory. ``SLUICE_TEST_PG`` overrides the server URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_SERVER = os.environ.get("SLUICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _server_url(dbname: str) -> str:
    base, _, _ = PG_SERVER.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a brand-new, empty PostgreSQL database, dropped after the test."""
    name = f"sluice_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _server_url(name)
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'sluice.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str:
    """Run the test once per store: the contract both implementations must meet."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")
