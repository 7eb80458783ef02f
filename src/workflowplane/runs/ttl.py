"""``ttlAfterCompletion`` durations: ``1d12h``, ``30m``, ``45s`` (the CRD enforces the form)."""

from __future__ import annotations

import datetime as dt
import re

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_ttl(text: str) -> dt.timedelta:
    match = _DURATION.match(text.strip())
    if not match or not text.strip():
        raise ValueError(f"ttlAfterCompletion {text!r} is not like 1d12h, 30m or 45s")
    try:  # the pattern bounds no number: past 4,300 digits or 999,999,999 days, it is an error
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except (ValueError, OverflowError):
        raise ValueError(f"ttlAfterCompletion {text[:40]!r}... is too long") from None
