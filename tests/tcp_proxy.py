"""A small TCP proxy for fault tests: cut a client's connections to a database mid-transaction.

    proxy = TcpProxy(server.port)        # listens on 127.0.0.1:<proxy.port>, forwards to it
    config = {**server.config(db), "port": proxy.port}
    proxy.cut()                          # reset every open connection, both sides
    proxy.block(); proxy.unblock()       # refuse new connections for a while
    proxy.stall(); proxy.resume()        # hold every byte, both ways, on every connection
    proxy.close()

A cut sends a TCP reset both ways (SO_LINGER 0), so the client sees a broken connection and the
server sees its session end at once, as after a network failure or a killed client; nothing is
flushed or shut down politely. A stall keeps the connections open and acknowledges what
arrives (the kernel does) but passes nothing on: a server that hangs after the handshake, or
never sends its greeting to a connection opened during the stall. One thread accepts, two
threads per connection copy bytes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

__all__ = ["TcpProxy"]

_HOST = "127.0.0.1"
_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, waking any thread blocked on the socket first."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a recv() in another thread; sends nothing
    sock.close()


class _Pair:
    """One proxied connection: the client's socket and ours to the server."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket):
        self.downstream = downstream
        self.upstream = upstream
        self._lock = threading.Lock()  # guards _open and _pumping
        self._open = True
        self._pumping = 2  # copy directions still running

    def reset(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        _reset(self.downstream)
        _reset(self.upstream)

    def direction_done(self) -> bool:
        """One copy direction ended; True when it was the last, and the pair is closed."""
        with self._lock:
            self._pumping -= 1
            if self._pumping or not self._open:
                return False
            self._open = False
        self.downstream.close()
        self.upstream.close()
        return True


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until `close()`."""

    def __init__(self, target_port: int, target_host: str = _HOST):
        self.target = (target_host, target_port)
        self._listener = socket.create_server((_HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        # Guards _pairs, _blocked, _closed and accepted; never held while doing socket I/O
        # except the non-blocking resets in cut().
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._blocked = False
        self._closed = False
        self._flowing = threading.Event()  # cleared while stalled
        self._flowing.set()
        self.accepted = 0  # connections forwarded so far
        self._acceptor = threading.Thread(
            target=self._accept_forever, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}>"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> int:
        """Reset every open connection, both sides; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            pair.reset()
        return len(pairs)

    def block(self) -> None:
        """Refuse new connections (each is reset right after accept) until `unblock()`."""
        with self._lock:
            self._blocked = True

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def stall(self) -> None:
        """Pass nothing on, either way, until `resume()` (connections stay open)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        with self._lock:
            self._closed = True
        self._flowing.set()  # lets the held bytes go, to sockets about to be reset
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        self._acceptor.join(5)
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _accept_forever(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refuse, closed = self._blocked, self._closed
            if closed:
                _reset(downstream)
                return
            if refuse:
                _reset(downstream)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
            except OSError:
                _reset(downstream)  # the server is down: so is the proxied connection
                continue
            upstream.settimeout(None)
            for sock in (downstream, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(downstream, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(
                    target=self._pump, args=(pair, src, dst), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                self._flowing.wait()
                dst.sendall(data)
            # An orderly end of one direction is passed on; the other may still have data.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            # Reset or cut: end the whole connection abruptly, like the network would.
            with self._lock:
                self._pairs.discard(pair)
            pair.reset()
            return
        if pair.direction_done():
            with self._lock:
                self._pairs.discard(pair)
