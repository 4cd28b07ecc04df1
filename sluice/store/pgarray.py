"""Python lists as PostgreSQL array literals, for parameters a statement reads as an array.

psycopg adapts a list element by element in Python, about 2 µs per element: for the batches
sluice writes (hundreds of ids per statement, several statements per chunk) that was a tenth
of a worker's CPU. A list of ints, floats, strings, bools and None becomes one text literal
such as ``{1,2,3}`` here instead; the server parses it as the array type the statement gives
(``CAST(:ids AS bigint[])``, or the other side of ``= ANY(...)``). It is data, never SQL text:
strings are quoted and escaped as the array input syntax asks, so no value can end the literal.
"""

from __future__ import annotations

from typing import Any


def array_literal(values: list[Any]) -> str | None:
    """``values`` as an array literal; None if an element is of another type (a nested list,
    bytes, a date: leave those to the driver)."""
    if all(type(v) is int for v in values):  # the usual case: ids, tokens, counts
        return "{" + ",".join(map(str, values)) + "}"
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif v is True or v is False:
            parts.append("t" if v else "f")
        elif type(v) is int or type(v) is float:
            parts.append(repr(v))  # inf and nan are valid float input
        elif isinstance(v, str):
            parts.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            return None
    return "{" + ",".join(parts) + "}"


def array_param(values: list[Any]) -> Any:
    """The parameter to send for ``values``: its array literal, or the list itself for the
    driver to adapt when :func:`array_literal` cannot render it."""
    literal = array_literal(values)
    return values if literal is None else literal


def with_array_literals(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with each list sent as :func:`array_param` gives it."""
    if not any(type(v) is list for v in params.values()):
        return params
    return {name: array_param(value) if type(value) is list else value
            for name, value in params.items()}
