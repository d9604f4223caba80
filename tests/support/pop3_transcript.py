"""C:/S: transcript files for the POP3 machine (tests/unit/transcripts/pop3/*.txt).

    # comment
    %options tls=1 starttls=0 [max_errors=N] [nopipeline]
    S: +OK mailkeep ready.
    C: USER alice
    S: +OK Send your password.
    %deleted k1 k2          (keys the UPDATE state removed; omitted: not checked)
    %closed quit            (the machine closed, with this reason)

Each C: line is sent with CRLF, each S: line expected with CRLF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.support.pop3_driver import FakeDriver, new_driver


@dataclass
class Transcript:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)  # ("C"|"S", text)
    deleted: list[str] | None = None
    closed: str | None = None

    @property
    def client_lines(self) -> list[bytes]:
        return [text.encode() + b"\r\n" for kind, text in self.steps if kind == "C"]

    @property
    def server_bytes(self) -> bytes:
        return b"".join(text.encode() + b"\r\n" for kind, text in self.steps if kind == "S")

    def driver(self) -> FakeDriver:
        o = self.options
        return new_driver(tls=o.get("tls") == "1", starttls=o.get("starttls") == "1",
                          max_errors=int(o.get("max_errors", "20")))

    @property
    def pipelining_ok(self) -> bool:
        return "nopipeline" not in self.options


def parse(path: Path) -> Transcript:
    t = Transcript(path.stem)
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("%options"):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                t.options[key] = value or "1"
        elif line.startswith("%deleted"):
            t.deleted = line.split()[1:]
        elif line.startswith("%closed"):
            t.closed = line.split(" ", 1)[1]
        elif line[:3] in ("C: ", "S: ") or line in ("C:", "S:"):
            t.steps.append((line[0], line[3:]))
        else:
            raise ValueError(f"{path.name}: bad transcript line {line!r}")
    return t


def record(path_in: Path) -> str:
    """Write the S: lines for a file of C: lines (used once, then reviewed by hand)."""
    t = parse(path_in)
    d = t.driver()
    out = ["S: " + x for x in d.out.decode().split("\r\n")[:-1]]
    d.out.clear()
    header = [ln for ln in path_in.read_text().splitlines()
              if ln.startswith(("#", "%options"))]
    for line in t.client_lines:
        out.append("C: " + line.decode().rstrip("\r\n"))
        d.feed(line)
        out += ["S: " + x for x in d.out.decode().split("\r\n")[:-1]]
        d.out.clear()
    footer = [ln for ln in path_in.read_text().splitlines() if ln.startswith(("%deleted",
                                                                             "%closed"))]
    return "\n".join(header + out + footer) + "\n"
