"""Receiving an SMTP DATA section (RFC 5321 §4.1.1.4, §4.5.2) within our limits.

aiosmtpd's own DATA reader holds the whole message, counts transparency dots towards the
size limit and knows nothing of the other sessions. This one removes the dots as it reads,
so SIZE is exact (RFC 1870 §3 counts the message, not the wire); stops holding data at the
first limit crossed but reads on to the final dot, so the session stays in sync and the
reply comes after the data (RFC 5321 §4.2.5); and reserves what it holds in the daemon-wide
input budget, so many large uploads at once are refused with a temporary error instead of
growing the process without bound.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from mailkeep.security.memory import InputBudget

# Memory is reserved in steps of this size (one reservation per 64 KiB of message, not one
# per line).
RESERVE_STEP = 64 * 1024


class DataOutcome(enum.Enum):
    OK = "ok"
    TOO_BIG = "too big"              # over the message size limit: 552 5.3.4
    LINE_TOO_LONG = "line too long"  # over the line length limit: 500 5.5.6
    BUSY = "busy"                    # the input budget is spent: 452 4.3.1
    TRUNCATED = "truncated"          # the connection ended before the final dot


@dataclass(slots=True)
class DataResult:
    outcome: DataOutcome
    content: bytes
    reserved: int  # octets reserved in the budget: the caller releases them when done

    def release(self, budget: InputBudget) -> None:
        budget.release(self.reserved)
        self.reserved = 0


async def receive(reader: asyncio.StreamReader, *, max_size: int, max_line: int,
                  budget: InputBudget) -> DataResult:
    """Read up to and including the final "." line; the message without transparency dots.

    `max_line` counts octets per line including CRLF, before dot removal (RFC 5321
    §4.5.3.1.6 text line; §4.5.2 allows the extra transparency dot on top, so a line may be
    max_line + 1 on the wire when it starts with a dot)."""
    parts: list[bytes] = []
    size = 0
    reserved = 0
    outcome = DataOutcome.OK
    overlong = False  # inside a line longer than the reader's limit
    try:
        while True:
            try:
                # Lines end at CRLF only (RFC 5321 §2.3.8): splitting at a bare LF is what lets
                # "\n.\r\n" end DATA early (SMTP smuggling). A bare CR or LF stays inside the
                # line, and the message is refused for it afterwards.
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # Longer than the reader buffer allows: drop what we have of it, keep reading.
                await reader.readexactly(exc.consumed)
                overlong = True
                if outcome is DataOutcome.OK:
                    outcome = DataOutcome.LINE_TOO_LONG
                parts.clear()
                continue
            except asyncio.IncompleteReadError:
                return DataResult(DataOutcome.TRUNCATED, b"", reserved)
            if overlong:  # the tail of an over-long line
                overlong = False
                continue
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]  # RFC 5321 §4.5.2: remove one leading dot
            if outcome is not DataOutcome.OK:
                continue
            if len(line) > max_line:
                outcome = DataOutcome.LINE_TOO_LONG
                parts.clear()
                continue
            size += len(line)
            if size > max_size:
                outcome = DataOutcome.TOO_BIG
                parts.clear()
                continue
            while size > reserved:
                if not budget.reserve(RESERVE_STEP):
                    outcome = DataOutcome.BUSY
                    parts.clear()
                    break
                reserved += RESERVE_STEP
            if outcome is DataOutcome.OK:
                parts.append(line)
    except BaseException:
        # Nobody else can give this back: aiosmtpd cancels the session's handler when the
        # client closes or resets the connection in the middle of DATA, and the reservation
        # would be lost for good (enough such clients would spend the whole budget, and
        # every later upload would get 452 until a restart).
        budget.release(reserved)
        raise
    if outcome is not DataOutcome.OK:
        budget.release(reserved)
        return DataResult(outcome, b"", 0)
    return DataResult(outcome, b"".join(parts), reserved)
