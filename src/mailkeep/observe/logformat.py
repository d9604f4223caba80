"""The daemon's log line formats: "text" (as always) and "json" (one object a line).

A JSON line carries the fields of the text line: time, level, logger, message, and the
connection id, peer address, listener and user where the message names them (the text lines
say "conn=ID ... peer=ADDR ..." inside the message; those words are lifted into fields of
their own, so a log collector can filter on them without parsing the message). A traceback,
where the text line has one, is the "exception" field.

    {"time": "2025-05-01T09:30:00.123+00:00", "level": "INFO", "logger": "mailkeep.auth",
     "message": "conn=1a2b000001 imap auth ok user=alice peer=127.0.0.1 mechanism=LOGIN",
     "conn": "1a2b000001", "peer": "127.0.0.1", "user": "alice"}

Secrets never reach the log in either format: the messages are the same.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# With several workers (workers/), each line says which process wrote it.
TEXT_FORMAT_PID = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# key=value words of our messages that become JSON fields (the value ends at white space).
_FIELDS = re.compile(r"(?<![\w=])(conn|peer|listener|user)=([^\s,;]+)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes every newline)."""

    def __init__(self, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, str] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if self.pid:
            out["pid"] = str(record.process)
        for key, value in _FIELDS.findall(message):
            if key not in out and value != "-":
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def formatter(kind: str, pid: bool = False) -> logging.Formatter:
    """The formatter of a `log_format` value ("text" or "json"); `pid`: name the process."""
    if kind == "json":
        return JsonFormatter(pid)
    return logging.Formatter(TEXT_FORMAT_PID if pid else TEXT_FORMAT)
