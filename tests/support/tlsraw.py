"""A TLS client over a plain socket through memory BIOs, for tests that must see below TLS.

With ssl.SSLSocket the TLS close_notify and the TCP FIN look alike (recv() returns b"").
Here the TLS layer is driven by hand, so a test can tell when the server ended TLS and,
separately, when it closed the TCP connection; and it never sends a close_notify of its
own (the kind of client that made servers wait).
"""

from __future__ import annotations

import socket
import ssl

from tests.support.daemon import HOSTNAME


class MemoryTlsClient:
    def __init__(self, port: int, context: ssl.SSLContext, *, timeout: float = 10.0,
                 server_hostname: str = HOSTNAME) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname)
        self.tls_closed = False   # the server's close_notify arrived
        self.tcp_closed = False   # the server's FIN arrived
        self.buf = b""
        self._handshake()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _feed(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.tcp_closed = True
            self.incoming.write_eof()
            return False
        self.incoming.write(chunk)
        return True

    def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ConnectionError("closed during handshake") from None

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def _read_tls(self) -> bool:
        """Decrypt what is available; False once TLS has ended."""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._feed():
                    return False
                continue
            except ssl.SSLZeroReturnError:
                self.tls_closed = True
                return False
            if not chunk:
                self.tls_closed = True
                return False
            self.buf += chunk
            return True

    def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            if not self._read_tls():
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def wait_tcp_close(self) -> bool:
        """Read (and drop) until the server closes TCP; True if it did before the socket
        timeout, False on timeout."""
        try:
            while not self.tcp_closed:
                self._feed()
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.tcp_closed = True
        return True

    def close(self) -> None:
        self.sock.close()
