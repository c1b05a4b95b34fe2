"""Telling, in seconds, that a download host cannot be reached (instead of minutes of retries)."""

from __future__ import annotations

import socket


def why_unreachable(host: str, timeout: float = 3.0) -> str | None:
    """None when ``host`` accepts an HTTPS connection, else the reason it does not."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return str(err) or type(err).__name__
    return None
