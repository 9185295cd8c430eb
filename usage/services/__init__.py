"""Usage services: record (usage.services.record; on PostgreSQL the database decides first, see
usage.services.fast), reservations, notices."""

from usage.services.notices import notices_send_pending, windows_close_finished
from usage.services.record import Outcome, UsageInput, usage_authorize, usage_record, usage_record_batch
from usage.services.reservations import (
    reservation_commit,
    reservation_create,
    reservation_release,
    reservations_release_expired,
)

__all__ = [
    "Outcome",
    "UsageInput",
    "notices_send_pending",
    "reservation_commit",
    "reservation_create",
    "reservation_release",
    "reservations_release_expired",
    "usage_authorize",
    "usage_record",
    "usage_record_batch",
    "windows_close_finished",
]
