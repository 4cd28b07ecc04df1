"""Load the named statements in ``sql/queries.sql`` and render them for one database."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\S+)\s*$", re.M)
# ":param" but not a PostgreSQL cast ("::text") nor a time inside a string literal.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_INCLUDE = re.compile(r"\{include:(\w+)\}")  # a shared part of statements, by block name


@cache
def _blocks() -> dict[str, str]:
    text = resources.files("sluice.store").joinpath("sql/queries.sql").read_text()
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        blocks[name] = "\n".join(lines).strip()
    return blocks


@cache
def render(name: str, dialect: str, tokens: tuple[tuple[str, str], ...]) -> str:
    """The statement ``name`` for ``dialect`` with its ``{tokens}`` filled in.

    PostgreSQL statements get psycopg's ``%(name)s`` placeholders; SQLite keeps ``:name``.
    """
    blocks = _blocks()
    sql = blocks.get(f"{name}@{dialect}") or blocks[name]
    sql = _INCLUDE.sub(lambda m: blocks[m.group(1)], sql)
    for key, value in tokens:
        sql = sql.replace("{" + key + "}", value)
    if dialect == "postgresql":
        sql = sql.replace("%", "%%")
        sql = _PARAM.sub(lambda m: f"%({m.group(1)})s", sql)
    return sql


def names() -> list[str]:
    return sorted({n.split("@")[0] for n in _blocks()})
