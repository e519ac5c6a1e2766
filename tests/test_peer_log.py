"""`PeerLog`: a line about a misbehaving peer at most once per interval per host."""

from __future__ import annotations

import logging

import pytest

from twostep.coordinator._peer_log import PeerLog, peer_host


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.1:5000", "ipv4:10.0.0.1"),
        ("ipv6:[::1]:5000", "ipv6:[::1]"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_a_peer_is_its_address_without_the_port(peer, host):
    assert peer_host(peer) == host


def test_one_line_per_interval_per_host_and_the_next_line_counts_the_rest(caplog):
    now = [0.0]
    lines = PeerLog(logging.getLogger("test.peer_log"), "garbage", 60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.peer_log"):
        logged = [lines.warning(f"ipv4:10.0.0.1:{port}") for port in range(1000, 1010)]
        other = lines.warning("ipv4:10.0.0.2:1000")
        now[0] = 61.0
        later = lines.warning("ipv4:10.0.0.1:2000")
    assert logged == [True] + [False] * 9 and other and later
    assert [r.__dict__["suppressed"] for r in caplog.records] == [0, 0, 9]
