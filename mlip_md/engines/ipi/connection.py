"""The driver's stream socket to i-PI: connecting with backoff, exact-length reads into a
reusable buffer, a progress watchdog (``timeout``) that names what the driver was waiting for.
"""
from __future__ import annotations

import socket
import time
from typing import Optional

from ...errors import ServerGoneError, ServerTimeoutError
from .wire import Message

#: seconds without a byte from i-PI after which the driver gives up (``--timeout``)
DEFAULT_TIMEOUT = 600.0


class SocketClient:
    """A connected stream socket to i-PI with exact-length reads into a reusable buffer.

    ``timeout`` (seconds, 0 = wait forever) is a progress watchdog: a read that gets no byte
    for that long, or a send the server does not take for that long, raises
    :class:`~mlip_md.errors.ServerTimeoutError` naming what the driver was waiting for (the
    next request, or the rest of a message). A driver that legitimately idles (more drivers
    than beads, a slow second force field in the same i-PI run) needs a longer one or 0.
    """

    def __init__(self, address: str, unix: bool = True, port: Optional[int] = None,
                 socket_prefix: str = "/tmp/ipi_", connect_timeout: float = 60.0,
                 timeout: float = DEFAULT_TIMEOUT):
        if not unix and port is None:
            raise ValueError("a TCP connection needs --port (or use --unix)")
        if not timeout >= 0.0:
            raise ValueError(f"timeout must be >= 0 seconds (0: wait forever), got {timeout!r}")
        self.target = socket_prefix + address if unix else (address, int(port))
        self.unix = unix
        self.connect_timeout = connect_timeout
        self.timeout = float(timeout)
        self.sock: Optional[socket.socket] = None
        self._buffer = bytearray(1 << 16)

    def describe(self) -> str:
        return f"unix socket {self.target}" if self.unix else f"{self.target[0]}:{self.target[1]}"

    def connect(self) -> None:
        """Connect, retrying with exponential backoff until ``connect_timeout`` seconds."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        last: Optional[OSError] = None
        while True:
            family = socket.AF_UNIX if self.unix else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(self.target)
            except OSError as exc:
                sock.close()
                last = exc
                if time.monotonic() + delay > deadline:
                    raise ServerGoneError(
                        f"could not reach i-PI at {self.describe()} within {self.connect_timeout:g} s "
                        f"({last.strerror or last}); is `i-pi` running with this address in its <ffsocket>?"
                    ) from None
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            if not self.unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout or None)
            self.sock = sock
            return

    def recv(self, n: int, message: Optional[Message] = None) -> memoryview:
        """Exactly n bytes (a view into the reusable buffer, valid until the next recv).

        ``message``: the message whose body is being read, or None when the n bytes are the
        next header (the driver is between messages until the first byte arrives)."""
        if n > len(self._buffer):
            self._buffer = bytearray(max(n, 2 * len(self._buffer)))
        view = memoryview(self._buffer)[:n]
        got = 0
        while got < n:
            try:
                chunk = self.sock.recv_into(view[got:], n - got)
            except socket.timeout:
                raise ServerTimeoutError(self._stalled(message, got, n)) from None
            except ConnectionError as exc:
                raise ServerGoneError(f"connection to i-PI lost ({exc.strerror or exc})") from None
            if chunk == 0:
                where = "between messages" if message is None and got == 0 else "mid-message"
                raise ServerGoneError(f"i-PI closed the connection {where}")
            got += chunk
        return view

    def _stalled(self, message: Optional[Message], got: int, n: int) -> str:
        """The one-line reason of a read timeout: what the driver was waiting for."""
        limit = f"{self.timeout:g} s"
        advice = "--timeout sets the limit (0: wait forever)"
        if message is None and got == 0:
            return (f"i-PI sent no request for {limit} (waiting between messages): the server is stalled "
                    f"(e.g. waiting for a driver that died) or has no work for this driver; {advice}")
        what = f"a {message.name} message" if message is not None else "a message header"
        return (f"i-PI stopped sending for {limit} in the middle of {what} (mid-message, {got} of the next "
                f"{n} bytes received): the server is stalled or the stream is out of sync; {advice}")

    def send(self, data) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ServerTimeoutError(
                f"i-PI took none of the driver's reply for {self.timeout:g} s (the server is stalled); "
                "--timeout sets the limit (0: wait forever)") from None
        except (BrokenPipeError, ConnectionError) as exc:
            raise ServerGoneError(f"connection to i-PI lost while sending ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
