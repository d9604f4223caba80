"""A stored message as a POP3 multi-line body (RFC 1939 §3), streamed chunk by chunk.

Line ends become CRLF (a Maildir written by other software may hold bare LF), every line
that starts with "." gets one more (byte-stuffing), and the body ends with CRLF "." CRLF.
For TOP (RFC 1939 §7) only the header, the blank line and the first n body lines are sent.
Memory stays bounded by the chunk size: a 4 MB message is never held whole.
"""

from __future__ import annotations

import re

TERMINATOR = b".\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


def normalise_crlf(data: bytes) -> bytes:
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def stuff(data: bytes, at_line_start: bool) -> bytes:
    """Byte-stuff CRLF text; `at_line_start`: data begins a line."""
    out = data.replace(b"\n.", b"\n..")
    if at_line_start and out.startswith(b"."):
        out = b"." + out
    return out


class MessageEncoder:
    """feed() chunks of the stored message, then finish(); each returns bytes to send.

    `body_lines` None sends the whole message (RETR); n sends the header and n body lines
    (TOP). `done` turns true once TOP has all it needs, so the reader may stop early."""

    def __init__(self, body_lines: int | None = None) -> None:
        self.body_lines = body_lines
        self.done = False
        self._carry = b""          # a trailing "\r" (RETR) or a partial line (TOP)
        self._at_line_start = True
        self._in_body = False
        self._sent_body_lines = 0
        self._ends_with_crlf = True  # of everything sent so far (an empty message: no line)
        self._sent_any = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        if self.body_lines is None:
            return self._feed_all(chunk)
        return self._feed_top(chunk)

    def _emit(self, data: bytes) -> bytes:
        if data:
            self._sent_any = True
            self._ends_with_crlf = data.endswith(b"\r\n")
        return data

    def _feed_all(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):  # maybe the first half of a CRLF: decide with the next chunk
            self._carry = b"\r"
            data = data[:-1]
        if not data:
            return b""
        data = stuff(normalise_crlf(data), self._at_line_start)
        self._at_line_start = data.endswith(b"\n")
        return self._emit(data)

    def _feed_top(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._carry = data
            return b""
        self._carry = data[end + 1:]
        out: list[bytes] = []
        for line in normalise_crlf(data[:end + 1]).split(b"\r\n")[:-1]:
            if self._take_line(line, out):
                break
        return self._emit(b"".join(out))

    def _take_line(self, line: bytes, out: list[bytes]) -> bool:
        """Append one line (without CRLF) if TOP wants it; True once TOP is complete."""
        assert self.body_lines is not None
        if self._in_body:
            if self._sent_body_lines >= self.body_lines:
                self.done = True
                return True
            self._sent_body_lines += 1
        elif line == b"":
            self._in_body = True  # the blank line is sent: it separates header and body
        out.append(stuff(line + b"\r\n", True))
        if self._in_body and self._sent_body_lines >= self.body_lines:
            self.done = True
            return True
        return False

    def finish(self) -> bytes:
        """What is still buffered, a CRLF if the message did not end with one, and "."."""
        out: list[bytes] = []
        if not self.done and self._carry:
            if self.body_lines is None:
                # A lone CR at the very end: treat it as the line end it was meant to be.
                out.append(b"\r\n")
                self._at_line_start = True
            else:
                last = self._carry[:-1] if self._carry.endswith(b"\r") else self._carry
                self._take_line(last, out)
        self._carry = b""
        tail = self._emit(b"".join(out))
        if self._sent_any and not self._ends_with_crlf:
            tail += b"\r\n"  # RFC 1939 §3: the terminating "." must start a line
        self.done = True
        return tail + TERMINATOR
