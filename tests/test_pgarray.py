"""Array literals (sluice.store.pgarray) read back by a real PostgreSQL as the values sent."""

from __future__ import annotations

import math

import psycopg
import pytest

from sluice.store.pgarray import array_literal, with_array_literals

AWKWARD = ['plain', 'with "quotes"', "back\\slash", "NULL", "", "{braces}, commas",
           "tab\tand\nline", "ünïcødé", " lead and trail ", None]


@pytest.mark.parametrize(("values", "cast"), [
    ([1, 2, -3, 2**62], "bigint[]"),
    ([], "bigint[]"),
    (AWKWARD, "text[]"),
    ([True, False, None], "boolean[]"),
    ([1.5, -0.0, 1e-300, 7], "float8[]"),
])
def test_literal_round_trips(pg_url, values, cast):
    literal = array_literal(values)
    assert isinstance(literal, str)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        got = conn.execute(f"SELECT CAST(%s AS {cast})", (literal,)).fetchone()[0]
    assert got == values


def test_infinite_and_nan_floats(pg_url):
    literal = array_literal([math.inf, -math.inf, math.nan])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        got = conn.execute("SELECT CAST(%s AS float8[])", (literal,)).fetchone()[0]
    assert got[:2] == [math.inf, -math.inf] and math.isnan(got[2])


def test_any_reads_an_untyped_literal_as_the_other_side(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT 5 = ANY(%s), 'b'::text = ANY(%s)",
                           (array_literal([1, 5]), array_literal(["a", "b"]))).fetchone()
    assert row == (True, True)


def test_other_types_are_left_to_the_driver():
    assert array_literal([b"bytes"]) is None
    assert array_literal([[1, 2]]) is None
    params = {"ids": [1, 2], "nested": [[1]], "name": "x"}
    assert with_array_literals(params) == {"ids": "{1,2}", "nested": [[1]], "name": "x"}
    plain = {"a": 1}
    assert with_array_literals(plain) is plain
