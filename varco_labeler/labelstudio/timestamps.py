"""Label Studio's timestamps, as one comparable kind: naive UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_timestamp(value: Any) -> datetime | None:
    """Label Studio's ISO timestamps ("...Z"), ours ("+00:00") or seconds since the epoch (older
    files), as naive UTC, comparable in every database; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def iso(value: datetime | None) -> str | None:
    """A naive UTC datetime the way Label Studio writes one."""
    return value.isoformat() + "Z" if value else None
