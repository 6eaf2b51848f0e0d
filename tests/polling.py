"""Polling for the tests that watch another process (a run being killed, a lock being taken)."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float = 120.0, step: float = 0.1):
    """Call ``condition`` every ``step`` seconds until it returns something true (returned), or
    ``timeout`` seconds have passed (None)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None
