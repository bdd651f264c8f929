"""Validity windows checked with a tolerance for clock skew between machines.

A job signed on the buyer's laptop is checked on every node's server; their
clocks differ by seconds to minutes. Each validity check therefore allows a
configurable skew (default 5 minutes) and, when it still fails, names both
clocks so the operator can tell a genuinely stale object from a machine whose
clock is wrong ("check NTP").
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fedtrust.errors import PolicyViolation
from fedtrust.trust.canonical import format_time, parse_time

__all__ = ["DEFAULT_SKEW", "check_not_expired", "check_started"]

#: how far apart two machines' clocks may be before validity checks fail
DEFAULT_SKEW = timedelta(minutes=5)


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def check_not_expired(expires_at: str, what: str, fix: str, *, now: datetime | None = None,
                      skew: timedelta = DEFAULT_SKEW) -> None:
    """PolicyViolation naming both clocks when `now` is past `expires_at` by more than `skew`."""
    when = _now(now)
    if when - skew >= parse_time(expires_at):
        raise PolicyViolation(
            f"{what} expired at {expires_at} (this machine's time is {format_time(when)}, clock skew allowed "
            f"{int(skew.total_seconds())} s); check NTP on both machines, else {fix}"
        )


def check_started(valid_from: str, what: str, *, now: datetime | None = None,
                  skew: timedelta = DEFAULT_SKEW) -> None:
    """PolicyViolation naming both clocks when `now` is before `valid_from` by more than `skew`."""
    when = _now(now)
    if when + skew < parse_time(valid_from):
        raise PolicyViolation(
            f"{what} is not valid before {valid_from} (this machine's time is {format_time(when)}, clock skew "
            f"allowed {int(skew.total_seconds())} s); check NTP on both machines, else wait until then"
        )
