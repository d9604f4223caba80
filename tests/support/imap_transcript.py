"""C:/S: transcript files for the IMAP machine (tests/unit/transcripts/imap/*.txt).

    # comment
    %options tls=1 starttls=0 [max_errors=N] [max_literal=N] [nopipeline] [provision=1]
             [quota=OCTETS] [quota_messages=N]
    S: * OK [CAPABILITY ...] mailkeep IMAP4rev1 ready.
    C: a1 LOGIN alice alice-pw
    S: a1 OK [CAPABILITY ...] Logged in.
    %closed logout          (the machine closed, with this reason)

Each C: and S: line is one line with CRLF. A literal's octets are written on the C:
lines that follow its "{n}" line: they are joined with CRLF and must add up to n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.store.quota import Quota
from tests.support.imap_driver import FakeImapDriver, new_driver


@dataclass
class Transcript:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str]] = field(default_factory=list)
    closed: str | None = None

    @property
    def client_lines(self) -> list[bytes]:
        return [text.encode() + b"\r\n" for kind, text in self.steps if kind == "C"]

    @property
    def server_bytes(self) -> bytes:
        return b"".join(text.encode() + b"\r\n" for kind, text in self.steps if kind == "S")

    def driver(self) -> FakeImapDriver:
        o = self.options
        return new_driver(tls=o.get("tls", "1") == "1", starttls=o.get("starttls") == "1",
                          max_errors=int(o.get("max_errors", "20")),
                          max_literal=int(o.get("max_literal", str(25 * 1024 * 1024))),
                          provision=o.get("provision") == "1",
                          quota=Quota(int(o.get("quota", "0")),
                                      int(o.get("quota_messages", "0"))))

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
        elif line.startswith("%closed"):
            t.closed = line.split(" ", 1)[1]
        elif line[:3] in ("C: ", "S: ") or line in ("C:", "S:"):
            t.steps.append((line[0], line[3:]))
        else:
            raise ValueError(f"{path.name}: bad transcript line {line!r}")
    return t


def record(path_in: Path) -> str:
    """The transcript with S: lines filled in from the machine (for review by hand)."""
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
    if d.closed:
        out.append(f"%closed {d.closed}")
    return "\n".join(header + out) + "\n"
