"""The one place the current time is read. Interfaces call `now()` once and pass it down."""

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
