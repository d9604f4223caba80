"""A throw-away mailkeep site for bench/imapmix.py: users user0001.. (password `secret`,
domain mail.test), each INBOX seeded with messages, IMAPS on loopback, `workers` as asked.

    python bench/mixsite.py /tmp/mix --workers 2 --port 20993   # writes the site
    mailkeep serve --config /tmp/mix/mailkeep.toml &             # (or python -m mailkeep)
    python bench/imapmix.py --port 20993 -c 10 -d 15

Run it again with another --workers on the same folder to switch (the mail is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mailkeep.directory.passwords import hash_password
from mailkeep.tls.certs import generate_selfsigned

SEED = 50  # messages per INBOX


def message(n: int) -> bytes:
    return (f"From: sender{n}@mail.test\r\nTo: user@mail.test\r\nSubject: m{n} seed\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:{n % 60:02d} +0000\r\n"
            f"Message-ID: <seed{n}@mail.test>\r\n\r\n" + "body line\r\n" * 40).encode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--port", type=int, default=20993)
    p.add_argument("--users", type=int, default=10)
    a = p.parse_args()
    root: Path = a.root
    (root / "certs").mkdir(parents=True, exist_ok=True)
    if not (root / "certs" / "mailkeep.crt").exists():
        generate_selfsigned(root / "certs" / "mailkeep.crt", root / "certs" / "mailkeep.key",
                            ["mail.test"])
    (root / "mailkeep.toml").write_text(f"""\
hostname = "mail.test"
domains = ["mail.test"]
data_dir = "data"
allow_root = true
log_level = "warning"
workers = {a.workers}
[tls]
cert = "certs/mailkeep.crt"
key = "certs/mailkeep.key"
[directory]
backend = "file"
path = "users.toml"
[security]
max_connections_per_ip = 1000
[imap]
max_connections_per_user_ip = 100
[listeners.imaps]
protocol = "imap"
tls = "implicit"
bind = ["127.0.0.1:{a.port}"]
[listeners.submission]
protocol = "submission"
tls = "starttls"
bind = ["127.0.0.1:0"]
""")
    users = root / "users.toml"
    if not users.exists():
        hashed = hash_password("secret")
        users.write_text("".join(
            f'[users.user{i:04d}]\npassword = "{hashed}"\n'
            f'addresses = ["user{i:04d}@mail.test"]\n' for i in range(1, a.users + 1)))
        for i in range(1, a.users + 1):
            new = root / "data" / "mail" / f"user{i:04d}" / "new"
            for sub in ("new", "cur", "tmp"):
                (new.parent / sub).mkdir(parents=True, exist_ok=True)
            for n in range(SEED):
                data = message(n)
                (new / f"{int(time.time())}.M{n}P1.bench,S={len(data)}").write_bytes(data)
    print(f"site in {root}: workers = {a.workers}, IMAPS on 127.0.0.1:{a.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
