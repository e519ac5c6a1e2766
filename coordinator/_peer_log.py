"""Log lines about what peers do wrong, at most once per interval per peer host.

A peer that sends garbage (issue 11: `\\xff\\xff\\xff\\xff` to every method, 8 threads) must
not turn each of its calls into a log line: that is a disk-filling amplifier and hides
everything else. `PeerLog.warning` writes the first line for a host, then counts the calls
of the next `interval_s` and writes them as `suppressed=N` on the first line after the
interval. A host is the peer without its port (every new connection has a new port).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["PeerLog", "peer_host"]

#: Hosts remembered at most; a flood from more hosts than this starts each one over (the
#: memory stays bounded, a host may then log twice in an interval).
_MAX_HOSTS = 4096


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.1:5000` -> `ipv4:10.0.0.1`, `ipv6:[::1]:5000` -> `ipv6:[::1]`; a peer
    without a port (a unix socket) as it is."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    return f"{kind}:{rest.rpartition(':')[0]}"


class PeerLog:
    """Rate-limited warnings about peers, one logger, one message per instance."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = logger
        self._message = message
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # guards _hosts
        self._hosts: dict[str, tuple[float, int]] = {}  # host -> (last line at, suppressed)

    def warning(self, peer: str, **fields: object) -> bool:
        """Log the message with `fields` and the peer, or count it; whether it was logged."""
        host = peer_host(peer)
        now = self._clock()
        with self._lock:
            last, suppressed = self._hosts.get(host, (None, 0))
            if last is not None and now - last < self._interval:
                self._hosts[host] = (last, suppressed + 1)
                return False
            if len(self._hosts) >= _MAX_HOSTS:
                self._hosts.clear()
            self._hosts[host] = (now, 0)
        self._log.warning(
            self._message,
            extra={**fields, "peer": peer, "suppressed": suppressed, "interval_s": self._interval},
        )
        return True
