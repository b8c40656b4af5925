"""The recipe's time range and how it is cut into periods (one cube time step group each).

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.

Every interval here is half-open: ``start`` inclusive, ``end`` exclusive, in UTC. A recipe's
``time.end: 2024-09-01`` therefore stops at the last instant of 31 August.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from schemas.recipe_common import RecipeModel, fail

__all__ = ["CustomPeriod", "Period", "PeriodMode", "TimeRange"]

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SEASONS = {12: "DJF", 3: "MAM", 6: "JJA", 9: "SON"}


class PeriodMode(StrEnum):
    """How the time range is cut into periods."""

    SINGLE = "single"
    """One period covering the whole range (id ``p0``)."""
    MONTHLY = "monthly"
    """Calendar months (ids like ``2024-06``)."""
    SEASONAL = "seasonal"
    """Meteorological seasons DJF, MAM, JJA, SON (ids like ``2024-JJA``; DJF takes the year of
    its January, so ``2024-DJF`` starts on 2023-12-01)."""
    CUSTOM = "custom"
    """The windows listed under ``time.custom``."""


@dataclass(frozen=True, slots=True)
class Period:
    """One time window of a build; scenes acquired inside it are reduced to the period's planes.

    Attributes:
        id: Short id used in the cube and the tile catalog (``2024-06``, ``2024-JJA``, ``p0``).
        start: First instant of the period (inclusive), timezone-aware UTC.
        end: First instant after the period (exclusive), timezone-aware UTC.
    """

    id: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"period {self.id}: start and end must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"period {self.id}: end {self.end} is not after start {self.start}")

    def contains(self, when: datetime) -> bool:
        """Whether ``when`` falls in ``[start, end)``; a naive datetime is taken as UTC."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return self.start <= when < self.end

    def stac_datetime(self) -> str:
        """The period as a STAC API ``datetime`` interval.

        STAC intervals are closed, so the end is written as the last millisecond before
        :attr:`end`: ``"2024-06-01T00:00:00Z/2024-06-30T23:59:59.999Z"``.
        """
        return f"{_rfc3339(self.start)}/{_rfc3339(self.end - timedelta(milliseconds=1))}"


class CustomPeriod(RecipeModel):
    """One user-defined window (``time.periods: custom``)."""

    id: str | None = Field(
        default=None,
        pattern=_ID_PATTERN,
        description="Period id in the cube and catalog; default 'p<index>'.",
    )
    start: date = Field(description="First day of the window (inclusive).")
    end: date = Field(description="Day after the last day of the window (exclusive).")

    @model_validator(mode="after")
    def _end_after_start(self) -> Self:
        if self.end <= self.start:
            fail(
                f"end {self.end} is not after start {self.start} (end is exclusive)",
                "end",
                "give an end date at least one day after start",
            )
        return self


class TimeRange(RecipeModel):
    """The time range of the dataset and how it is cut into periods."""

    start: date = Field(description="First day of the range (inclusive), e.g. 2024-05-01.")
    end: date = Field(
        description=(
            "Day after the last day of the range (exclusive): 2024-09-01 ends with 31 August."
        )
    )
    periods: PeriodMode = Field(
        default=PeriodMode.SINGLE,
        description=(
            "How the range is cut: single (one window), monthly (calendar months), seasonal "
            "(DJF, MAM, JJA, SON), or custom (the windows under 'custom'). Periods are clipped "
            "to the range."
        ),
    )
    custom: list[CustomPeriod] | None = Field(
        default=None,
        description=(
            "The windows for periods: custom, in time order, not overlapping, inside the range."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.end <= self.start:
            fail(
                f"end {self.end} is not after start {self.start} (end is exclusive)",
                "end",
                "give an end date at least one day after start",
            )
        if self.periods is PeriodMode.CUSTOM:
            if not self.custom:
                fail(
                    "periods is 'custom' but no windows are listed",
                    "custom",
                    "list the windows under time.custom, e.g. [{start: 2024-06-01, end: "
                    "2024-07-01}], or choose periods: single, monthly or seasonal",
                )
            self._check_custom(self.custom)
        elif self.custom is not None:
            fail(
                f"custom windows are listed but periods is '{self.periods}'",
                "custom",
                "set periods: custom, or remove time.custom",
            )
        return self

    def _check_custom(self, windows: list[CustomPeriod]) -> None:
        seen: dict[str, int] = {}
        for i, window in enumerate(windows):
            if window.start < self.start or window.end > self.end:
                fail(
                    f"window {window.start}..{window.end} is not inside the time range "
                    f"{self.start}..{self.end}",
                    f"custom[{i}]",
                    "move the window inside time.start..time.end or widen the range",
                )
            if i and window.start < windows[i - 1].end:
                fail(
                    f"window starts on {window.start}, before the previous one ends "
                    f"({windows[i - 1].end})",
                    f"custom[{i}].start",
                    "list windows in time order without overlap",
                )
            pid = window.id or f"p{i}"
            if pid in seen:
                fail(
                    f"period id '{pid}' is used twice (also custom[{seen[pid]}])",
                    f"custom[{i}].id",
                    "give every window a distinct id",
                )
            seen[pid] = i

    def to_periods(self) -> list[Period]:
        """Cut the range into periods, in time order, each clipped to ``[start, end)``.

        Returns:
            The periods; never empty.
        """
        if self.periods is PeriodMode.SINGLE:
            return [Period("p0", _utc(self.start), _utc(self.end))]
        if self.periods is PeriodMode.CUSTOM:
            assert self.custom is not None  # guaranteed by validation
            return [
                Period(w.id or f"p{i}", _utc(w.start), _utc(w.end))
                for i, w in enumerate(self.custom)
            ]
        step = 1 if self.periods is PeriodMode.MONTHLY else 3
        first = _period_start(self.start, step)
        out: list[Period] = []
        while first < self.end:
            nxt = _add_months(first, step)
            pid = f"{first:%Y-%m}" if step == 1 else _season_id(first)
            out.append(Period(pid, _utc(max(first, self.start)), _utc(min(nxt, self.end))))
            first = nxt
        return out


def _rfc3339(when: datetime) -> str:
    """``2024-06-30T23:59:59.999Z``; the milliseconds are left out when they are zero."""
    when = when.astimezone(UTC)
    millis = when.microsecond // 1000
    return f"{when:%Y-%m-%dT%H:%M:%S}" + (f".{millis:03d}Z" if millis else "Z")


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


def _add_months(day: date, months: int) -> date:
    year, month0 = divmod(day.year * 12 + day.month - 1 + months, 12)
    return date(year, month0 + 1, 1)


def _period_start(day: date, step: int) -> date:
    """First day of the month (step 1) or meteorological season (step 3) containing ``day``."""
    if step == 1:
        return date(day.year, day.month, 1)
    back = day.month % 3  # Dec, Mar, Jun, Sep start a season
    return _add_months(date(day.year, day.month, 1), -back)


def _season_id(first: date) -> str:
    year = first.year + 1 if first.month == 12 else first.year
    return f"{year}-{_SEASONS[first.month]}"
