"""Cron expressions (Spring/Quartz syntax) and their next firing instant, without dependencies.

Syntax. Six fields, seconds first: ``second minute hour day-of-month month day-of-week``, plus an
optional seventh Quartz ``year`` field (1970-2199). A classic five-field Unix expression
(``minute hour day-of-month month day-of-week``) fires at second 0. Every field takes ``*``,
lists ``a,b``, ranges ``a-b`` and steps ``*/n``, ``a/n`` (a to the field's end), ``a-b/n``;
``?`` means "any" and is only allowed in day-of-month and day-of-week. Month names JAN-DEC and
weekday names SUN-SAT are case-insensitive and work in ranges (``MON-FRI``). Day-of-month also
takes ``L`` (last day), ``L-n`` (n days before the last), ``nW`` (the weekday nearest day n,
never crossing into another month) and ``LW`` (last weekday); day-of-week takes ``nL``/``FRIL``
(last Friday of the month) and ``n#k``/``FRI#3`` (k-th Friday, k 1-5). Macros: ``@yearly``,
``@annually``, ``@monthly``, ``@weekly`` (Sunday 00:00), ``@daily``, ``@midnight``, ``@hourly``.

Day-of-week numbers follow Spring and Unix cron: 0 and 7 are Sunday, 1 is Monday ... 6 is
Saturday. Quartz numbers 1-7 with 1 = Sunday, so a Quartz ``6#3`` (third Friday) means the third
Saturday here; names (``FRI#3``) mean the same everywhere. In a range, SUN as the end means 7,
so ``SAT-SUN`` and ``FRI-SUN`` work.

Day-of-month and day-of-week together. When both are restricted, a six- or seven-field
expression fires only on days matching both (Spring); a five-field expression fires on days
matching either (Vixie cron), where a field starting with ``*`` (such as ``*/2``) counts as
unrestricted, as in Vixie cron.

Daylight saving. Fields are matched against wall-clock time in the expression's time zone.
A wall time skipped by a spring-forward gap fires once, at the first instant after the gap
(02:30 fires at 03:00). In a fall-back overlap, a wall time that occurs twice fires once (the
first occurrence) when the hour field is a fixed set, so daily jobs neither skip nor double; when
the hour field is ``*``, a step ``*/n`` or covers all 24 hours, both occurrences fire, so an
hourly job still runs every real hour. Note that ``0 */15 2 * * ?`` (fixed hour) therefore does
not run during the repeated 02:00-03:00; cronsim and Debian cron would run it in both.

Cost. ``next_after`` jumps field by field (year, month, day, hour, minute, second), so its work
does not grow with the distance to the next firing. An expression whose days can never occur
(``0 0 0 30 2 ?``) is recognised at parse time and returns None at once; others fire within a
few decades at most (``? 2 MON#5``: 2044, 2072), and the search stops after 400 years, when the
Gregorian calendar repeats.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from sluice.errors import CronError

__all__ = ["Cron"]

_SECOND = timedelta(seconds=1)
_CYCLE_YEARS = 400  # the Gregorian calendar repeats every 400 years (146097 days = 20871 weeks)
_LAST_YEAR = 9998  # keeps wall-clock arithmetic clear of datetime.max
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MACROS = {
    "@yearly": "0 0 0 1 1 ?",
    "@annually": "0 0 0 1 1 ?",
    "@monthly": "0 0 0 1 * ?",
    "@weekly": "0 0 0 ? * SUN",
    "@daily": "0 0 0 * * ?",
    "@midnight": "0 0 0 * * ?",
    "@hourly": "0 0 * * * ?",
}
_ITEM = re.compile(r"(\*|\w+(?:-\w+)?)(?:/(\w*))?", re.ASCII)
_NUMBER = re.compile(r"[0-9]+", re.ASCII)

_Table = tuple[int | None, ...]  # table[x] = the smallest allowed value >= x, None past the last


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0  # the number of names[0]


_SECONDS = _Field("second", 0, 59)
_MINUTES = _Field("minute", 0, 59)
_HOURS = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_DOW = _Field("day-of-week", 0, 7, _DAYS)
_YEAR = _Field("year", 1970, 2199)


class _Parser:
    """Turns the text of one expression into allowed-value sets; every error names the field."""

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def error(self, message: str) -> CronError:
        return CronError(f'cron "{self.expression}": {message}')

    def field_error(self, spec: _Field, text: str, problem: str, token: str = "") -> CronError:
        # Point at the offending part when the field is a list or range ("1,61": "61" is ...).
        where = f': "{token}"' if token and token != text else ""
        return self.error(f'{spec.name} field "{text}"{where} {problem}')

    def number(self, token: str, spec: _Field, text: str, low: int, high: int) -> int:
        if _NUMBER.fullmatch(token):
            value = int(token) if len(token) <= 9 else high + 1  # huge: out of range, not a crash
        elif token in spec.names:
            value = spec.names.index(token) + spec.name_base
        else:
            names = f" or {spec.names[0]}-{spec.names[-1]}" if spec.names else ""
            raise self.field_error(
                spec, text, f"is not a number (allowed: {low}-{high}{names})", token
            )
        if not low <= value <= high:
            raise self.field_error(spec, text, f"is out of range {low}-{high}", token)
        return value

    def values(self, text: str, spec: _Field) -> set[int]:
        """The numbers a plain field allows: ``*``, lists, ranges and steps."""
        result: set[int] = set()
        for item in text.upper().split(","):
            result |= self.item(item, spec, text)
        return result

    def item(self, item: str, spec: _Field, text: str) -> set[int]:
        match = _ITEM.fullmatch(item)
        if match is None:
            if not item:
                raise self.field_error(spec, text, "has an empty list item: write a,b")
            if "?" in item and spec not in (_DOM, _DOW):
                raise self.error('"?" is only allowed in day-of-month or day-of-week')
            raise self.field_error(
                spec,
                text,
                "is not valid: use *, a number, a,b, a-b, */n, "
                "a/n or a-b/n" + (' ("?" only alone)' * ("?" in item)),
                item,
            )
        base, step_text = match.groups()
        if base == "*":
            low, high = spec.low, spec.high
        elif "-" in base:
            first, last = base.split("-")
            low = self.number(first, spec, text, spec.low, spec.high)
            high = self.number(last, spec, text, spec.low, spec.high)
            if spec is _DOW and high == 0 and low > 0:
                high = 7  # "SAT-SUN" ends on Sunday = 7
            if low > high:
                raise self.field_error(spec, text, "goes backwards: write low-high", base)
        else:
            low = self.number(base, spec, text, spec.low, spec.high)
            high = spec.high if step_text is not None else low  # "a/n" runs to the field's end
        step, span = 1, spec.high - spec.low + 1
        if step_text is not None:
            bad = not _NUMBER.fullmatch(step_text) or len(step_text) > 9
            if bad or not 1 <= int(step_text) <= span:
                raise self.field_error(spec, text, f"has a bad step: use /1 to /{span}", item)
            step = int(step_text)
        return set(range(low, high + 1, step))


@dataclass(frozen=True)
class _Days:
    """Which days of a month match, given only the month's length and its first weekday."""

    dom: frozenset[int]
    dom_rules: tuple[tuple[str, int], ...]  # ("L", n) for L-n, ("W", n) for nW, ("LW", 0)
    dow: frozenset[int]  # 0 = Sunday
    dow_rules: tuple[tuple[str, int, int], ...]  # ("L", weekday, 0) or ("#", weekday, k)
    either: bool  # Vixie: restricted dom OR restricted dow

    def matching(self, length: int, first: int) -> set[int]:
        def weekday(day: int) -> int:
            return (first + day - 1) % 7

        dom = {d for d in self.dom if d <= length}
        for kind, n in self.dom_rules:
            day = _dom_rule(kind, n, length, weekday)
            if day is not None:
                dom.add(day)
        dow = {d for wd in self.dow for d in range(1 + (wd - first) % 7, length + 1, 7)}
        for kind, wd, k in self.dow_rules:
            if kind == "#":
                day = 1 + (wd - first) % 7 + 7 * (k - 1)
            else:
                day = length - (weekday(length) - wd) % 7
            if day <= length:
                dow.add(day)
        return dom | dow if self.either else dom & dow


def _dom_rule(kind: str, n: int, length: int, weekday: Callable[[int], int]) -> int | None:
    if kind == "L":
        return length - n if length - n >= 1 else None
    day = length if kind == "LW" else n
    if day > length:
        return None  # "31W" in a 30-day month does not fire, like a plain 31
    wd = weekday(day)
    if wd == 6:  # Saturday: the Friday before, unless that leaves the month
        return day - 1 if day > 1 else day + 2
    if wd == 0:  # Sunday: the Monday after, unless that leaves the month
        return day + 1 if day < length else day - 2
    return day


@lru_cache(maxsize=4096)
def _month_shape(year: int, month: int) -> tuple[int, int]:
    """(length, weekday of the 1st with 0 = Sunday): all a month's day matching depends on."""
    monday_first, length = calendar.monthrange(year, month)
    return length, (monday_first + 1) % 7


def _table(allowed: set[int], high: int) -> _Table:
    following: int | None = None
    table: list[int | None] = [None] * (high + 2)
    for value in range(high, -1, -1):
        if value in allowed:
            following = value
        table[value] = following
    return tuple(table)


@dataclass(frozen=True)
class _Compiled:
    seconds: _Table
    minutes: _Table
    hours: _Table
    months: _Table
    years: _Table | None  # indexed from 1970; None when there is no year field
    last_year: int
    days: _Days
    every_hour: bool  # both copies of a repeated fall-back hour fire
    possible: bool
    # Filled on first use (at most 28 shapes): building them all would make parsing 10x slower.
    day_tables: dict[tuple[int, int], _Table] = field(default_factory=dict)

    def day_table(self, shape: tuple[int, int]) -> _Table:
        table = self.day_tables[shape] = _table(self.days.matching(*shape), 32)
        return table


def _compile(parser: _Parser, fields: list[str], five: bool) -> _Compiled:
    seconds, minutes, hours, dom, months, dow = fields[:6]
    hour_set = parser.values(hours, _HOURS)
    month_set = parser.values(months, _MONTH)
    years: _Table | None = None
    last_year = _LAST_YEAR
    if len(fields) == 7:
        year_set = {y - 1970 for y in parser.values(fields[6], _YEAR)}
        years, last_year = _table(year_set, 2199 - 1970), max(year_set) + 1970
    restricted = [text[0] not in "*?" for text in (dom, dow)]
    days = _Days(*_parse_dom(parser, dom), *_parse_dow(parser, dow), five and all(restricted))
    # A common and a leap year give every month length (February: 28 and 29).
    lengths = {calendar.monthrange(year, m)[1] for m in month_set for year in (2023, 2024)}
    # Every (length, first weekday) pair recurs, so one matching shape proves it can fire.
    possible = any(days.matching(length, first) for length in lengths for first in range(7))
    return _Compiled(
        seconds=_table(parser.values(seconds, _SECONDS), 59),
        minutes=_table(parser.values(minutes, _MINUTES), 59),
        hours=_table(hour_set, 23),
        months=_table(month_set, 12),
        years=years,
        last_year=last_year,
        days=days,
        every_hour=hours.startswith("*") or len(hour_set) == 24,
        possible=possible,
    )


def _parse_dom(parser: _Parser, text: str) -> tuple[frozenset[int], tuple[tuple[str, int], ...]]:
    if text == "?":
        return frozenset(range(1, 32)), ()
    plain: set[int] = set()
    rules: list[tuple[str, int]] = []
    for item in text.upper().split(","):
        if item == "LW":
            rules.append(("LW", 0))
        elif item == "L":
            rules.append(("L", 0))
        elif item.startswith("L-"):  # n days before the last
            rules.append(("L", parser.number(item[2:], _DOM, text, 1, 30)))
        elif item.endswith("W") and len(item) > 1:
            rules.append(("W", parser.number(item[:-1], _DOM, text, 1, 31)))
        else:
            plain |= parser.item(item, _DOM, text)
    return frozenset(plain), tuple(rules)


def _parse_dow(
    parser: _Parser, text: str
) -> tuple[frozenset[int], tuple[tuple[str, int, int], ...]]:
    if text == "?":
        return frozenset(range(7)), ()
    plain: set[int] = set()
    rules: list[tuple[str, int, int]] = []
    for item in text.upper().split(","):
        if "#" in item:
            day, _, nth = item.partition("#")
            if nth not in ("1", "2", "3", "4", "5"):
                raise parser.field_error(_DOW, text, "needs weekday#k with k 1-5, e.g. FRI#3", item)
            rules.append(("#", parser.number(day, _DOW, text, 0, 7) % 7, int(nth)))
        elif item.endswith("L") and len(item) > 1:
            rules.append(("L", parser.number(item[:-1], _DOW, text, 0, 7) % 7, 0))
        elif item == "L":
            raise parser.field_error(_DOW, text, 'needs a weekday before "L", e.g. 5L or FRIL')
        else:
            plain |= {day % 7 for day in parser.item(item, _DOW, text)}
    return frozenset(plain), tuple(rules)


def _zone(parser: _Parser, timezone: object) -> ZoneInfo:
    if isinstance(timezone, ZoneInfo):
        return timezone
    if isinstance(timezone, str):
        try:
            return ZoneInfo(timezone)
        except (KeyError, ValueError, OSError, TypeError):  # ZoneInfoNotFoundError is a KeyError
            pass
    raise parser.error(f'unknown timezone "{timezone}": use an IANA name such as "Europe/Berlin"')


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression bound to a time zone; build it with :meth:`Cron.parse`."""

    expression: str
    timezone: ZoneInfo
    _compiled: _Compiled = field(repr=False, compare=False)

    @classmethod
    def parse(cls, expression: str, timezone: str | ZoneInfo = "UTC") -> Cron:
        """Parse ``expression``; raises CronError naming the field and what is allowed."""
        if not isinstance(expression, str):
            raise CronError(f"cron expression must be a string, got {expression!r}")
        parser = _Parser(expression)
        zone = _zone(parser, timezone)
        text = expression.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise parser.error(f'unknown macro "{text}": use {", ".join(_MACROS)}')
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) not in (5, 6, 7):
            raise parser.error(f"expected 5 or 6 fields (or 7 with a year), got {len(fields)}")
        five = len(fields) == 5
        compiled = _compile(parser, ["0", *fields] if five else fields, five)
        return cls(expression, zone, compiled)

    def next_after(self, after: datetime) -> datetime | None:
        """The first firing strictly after ``after`` (aware), in UTC; None if it never fires."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"next_after needs a timezone-aware datetime, got {after!r}")
        if not self._compiled.possible:
            return None
        local = after.astimezone(self.timezone)
        wall = local.replace(tzinfo=None, fold=0)
        start = wall - (local.utcoffset() or timedelta())  # `after` as naive UTC, to compare
        if local.fold == 1 or not self._compiled.every_hour:
            return self._from_wall(wall, start)
        first, second = self._offsets(wall.replace(microsecond=0))
        if first == second:
            return self._from_wall(wall, start)
        # In the first pass through a repeated span, for an every-hour schedule: the rest of the
        # first pass fires first, then the whole second pass, then the wall times after the span.
        span_start, span_end = self._overlap(wall.replace(microsecond=0))
        found = self._next_wall(wall)
        if found is not None and found < span_end:
            return self._utc(found - first)
        found = self._next_wall(span_start - _SECOND)
        if found is not None and found < span_end:
            return self._utc(found - second)
        return self._from_wall(span_end - _SECOND, start)

    def _from_wall(self, wall: datetime, start: datetime) -> datetime | None:
        """Walk matching wall times after ``wall`` to the first real instant after ``start``."""
        while (found := self._next_wall(wall)) is not None:
            before, after = self._offsets(found)
            if before == after:
                return self._utc(found - before)
            if before < after:  # spring-forward gap: fire when the gap ends
                return self._utc(self._transition(found - after, found - before))
            if found - before > start:  # first occurrence of a repeated wall time
                return self._utc(found - before)
            if self._compiled.every_hour:
                return self._utc(found - after)
            wall = self._overlap(found)[1] - _SECOND  # fixed hours fired in the first pass
        return None

    def _next_wall(self, wall: datetime) -> datetime | None:
        """The first matching wall-clock time strictly after ``wall``, field by field."""
        c = self._compiled
        if wall.year > min(c.last_year, _LAST_YEAR):
            return None
        t = wall.replace(microsecond=0) + _SECOND
        y, mo, d, h, mi, s = t.year, t.month, t.day, t.hour, t.minute, t.second
        # Past 400 years the calendar repeats, so a search that long has proved "never".
        limit = min(c.last_year, wall.year + _CYCLE_YEARS)
        while y <= limit:
            if c.years is not None and (ny := c.years[max(y - 1970, 0)]) != y - 1970:
                if ny is None:
                    return None
                y, mo, d, h, mi, s = ny + 1970, 1, 1, 0, 0, 0
            if (nm := c.months[mo]) is None:
                y, mo, d, h, mi, s = y + 1, 1, 1, 0, 0, 0
                continue
            if nm != mo:
                mo, d, h, mi, s = nm, 1, 0, 0, 0
            shape = _month_shape(y, mo)
            if (nd := (c.day_tables.get(shape) or c.day_table(shape))[d]) is None:
                mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
                continue
            if nd != d:
                d, h, mi, s = nd, 0, 0, 0
            if (nh := c.hours[h]) is None:
                d, h, mi, s = d + 1, 0, 0, 0
                continue
            if nh != h:
                h, mi, s = nh, 0, 0
            if (nmi := c.minutes[mi]) is None:
                h, mi, s = h + 1, 0, 0
                continue
            if nmi != mi:
                mi, s = nmi, 0
            if (ns := c.seconds[s]) is None:
                mi, s = mi + 1, 0
                continue
            return datetime(y, mo, d, h, mi, ns)
        return None

    def _offsets(self, wall: datetime) -> tuple[timedelta, timedelta]:
        """UTC offsets of a wall time read before and after a transition; equal when unambiguous."""
        aware = wall.replace(tzinfo=self.timezone)
        return aware.utcoffset(), aware.replace(fold=1).utcoffset()  # type: ignore[return-value]

    def _overlap(self, wall: datetime) -> tuple[datetime, datetime]:
        """For a wall time that occurs twice: (start, end) of the repeated wall-clock span."""
        before, after = self._offsets(wall)
        switch = self._transition(wall - before, wall - after)
        return switch + after, switch + before

    def _transition(self, low: datetime, high: datetime) -> datetime:
        """The first whole-second UTC instant in (low, high] whose offset differs from low's."""
        zone = self.timezone
        base = low.replace(tzinfo=UTC).astimezone(zone).utcoffset()
        lo, hi = 0, int((high - low).total_seconds())
        while hi - lo > 1:  # tz data changes offsets on whole seconds
            mid = (lo + hi) // 2
            moment = (low + timedelta(seconds=mid)).replace(tzinfo=UTC)
            lo, hi = (mid, hi) if moment.astimezone(zone).utcoffset() == base else (lo, mid)
        return low + timedelta(seconds=hi)

    @staticmethod
    def _utc(instant: datetime) -> datetime:
        return instant.replace(tzinfo=UTC)
