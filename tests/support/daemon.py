"""Start the real daemon on loopback with ephemeral ports, in a thread or a subprocess."""

from __future__ import annotations

import asyncio
import imaplib
import json
import os
import poplib
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import uvloop

from mailkeep.app import Daemon
from mailkeep.config import load_config
from mailkeep.directory.passwords import hash_password

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
# name -> (password, addresses, send_as_others)
USERS: dict[str, tuple[str, list[str], bool]] = {
    "alice": ("alice-secret-pw", ["alice@example.test", "a.smith@example.test"], False),
    "bob": ("bob-secret-pw-2", ["bob@example.test"], False),
    "app": ("app-secret-pw-3", ["noreply@example.test"], True),
}
_HASHES: dict[str, str] = {}


def _hash(pw: str) -> str:
    if pw not in _HASHES:
        _HASHES[pw] = hash_password(pw)
    return _HASHES[pw]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table; keys quoted (domains have dots)
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_table(name: str, table: dict[str, Any]) -> list[str]:
    """`[name]` with its keys; nested dicts become inline tables."""
    return [f"[{name}]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())]


def write_config(root: Path, ca: trustme.CA, *, submission: dict[str, Any] | None = None,
                 security: dict[str, Any] | None = None, extra_top: dict[str, Any] | None = None,
                 bind_host: str = "127.0.0.1", pop3_listeners: bool = False,
                 pop3: dict[str, Any] | None = None, imap_listeners: bool = False,
                 imap: dict[str, Any] | None = None, tls: dict[str, Any] | None = None,
                 delivery: dict[str, Any] | None = None, dkim: dict[str, Any] | None = None,
                 listeners: dict[str, dict[str, Any]] | None = None,
                 users: dict[str, tuple[str, list[str], bool]] | None = None) -> Path:
    """pop3_listeners: also "pop3s" (implicit TLS) and "pop3" (STLS) listeners; pop3: [pop3].
    imap_listeners: also "imaps" (implicit TLS) and "imap" (STARTTLS); imap: [imap].

    delivery: the [delivery] table (nested dicts such as routes, domains, tls_policy and
    local_domains become inline tables), e.g.
        delivery={"dns_servers": [dns.address], "port": up.port, "retry_schedule": [0.5]}
    dkim: domain -> {"selector": ..., "key": ...}, written as [dkim.domains."DOMAIN"].
    listeners: more listeners, name -> keys; `bind` defaults to one ephemeral port on
    bind_host, e.g. {"inbound": {"protocol": "smtp", "tls": "starttls"},
    "apps": {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
    "senders": ["@example.test"], "may_relay": True, "rate": "3/min"}}.
    users: the users file (default USERS)."""
    certs = root / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(HOSTNAME, "localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(certs / "mailkeep.key"))
    leaf.cert_chain_pems[0].write_to_path(str(certs / "mailkeep.crt"))
    lines = [f'hostname = "{HOSTNAME}"', f'domains = ["{DOMAIN}"]', 'data_dir = "data"']
    if os.geteuid() == 0 and "run_as" not in (extra_top or {}):
        lines.append("allow_root = true")  # the tests run as root in CI (a daemon thread)
    if "workers" not in (extra_top or {}):
        lines.append("workers = 1")  # one process unless a test asks for more
    for k, v in (extra_top or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    lines += ["[tls]", 'cert = "certs/mailkeep.crt"', 'key = "certs/mailkeep.key"',
              "reload_interval = 0.2",
              *[f"{k} = {toml_value(v)}" for k, v in (tls or {}).items()],
              "[directory]", 'backend = "file"', 'path = "users.toml"']
    lines.append("[submission]")
    lines += [f"{k} = {toml_value(v)}" for k, v in (submission or {}).items()]
    lines.append("[security]")
    lines += [f"{k} = {toml_value(v)}" for k, v in (security or {}).items()]
    lines += ["[listeners.submission]", 'protocol = "submission"', 'tls = "starttls"',
              f'bind = ["{bind_host}:0"]',
              "[listeners.submissions]", 'protocol = "submission"', 'tls = "implicit"',
              f'bind = ["{bind_host}:0"]']
    if pop3 is not None:
        lines.insert(lines.index("[security]"), "[pop3]")
        lines[lines.index("[pop3]") + 1:lines.index("[pop3]") + 1] = [
            f"{k} = {toml_value(v)}" for k, v in pop3.items()]
    if imap is not None:
        lines.insert(lines.index("[security]"), "[imap]")
        lines[lines.index("[imap]") + 1:lines.index("[imap]") + 1] = [
            f"{k} = {toml_value(v)}" for k, v in imap.items()]
    if imap_listeners:
        lines += ["[listeners.imaps]", 'protocol = "imap"', 'tls = "implicit"',
                  f'bind = ["{bind_host}:0"]',
                  "[listeners.imap]", 'protocol = "imap"', 'tls = "starttls"',
                  f'bind = ["{bind_host}:0"]']
    if pop3_listeners:
        lines += ["[listeners.pop3s]", 'protocol = "pop3"', 'tls = "implicit"',
                  f'bind = ["{bind_host}:0"]',
                  "[listeners.pop3]", 'protocol = "pop3"', 'tls = "starttls"',
                  f'bind = ["{bind_host}:0"]']
    for name, table in (listeners or {}).items():
        lines += toml_table(f"listeners.{name}", {"bind": [f"{bind_host}:0"], **table})
    if delivery is not None:
        lines += toml_table("delivery", delivery)
    for domain, table in (dkim or {}).items():
        lines += toml_table(f"dkim.domains.{json.dumps(domain)}", table)
    (root / "mailkeep.toml").write_text("\n".join(lines) + "\n")
    write_users(root / "users.toml", USERS if users is None else users)
    return root / "mailkeep.toml"


def write_users(path: Path, users: dict[str, tuple[str, list[str], bool]]) -> None:
    out = []
    for name, (pw, addrs, send_as) in users.items():
        out += [f"[users.{name}]", f"password = {toml_value(_hash(pw))}",
                f"addresses = {toml_value(addrs)}", f"send_as_others = {toml_value(send_as)}"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(out) + "\n")
    os.replace(tmp, path)


@dataclass
class RunningDaemon:
    root: Path
    ca: trustme.CA
    ports: dict[str, int]
    data_dir: Path
    stop: Callable[[], None]
    daemon: Daemon | None = None
    loop: asyncio.AbstractEventLoop | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def submissions_port(self) -> int:
        return self.ports["submissions"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3s"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    def pop3s(self, timeout: float = 10) -> poplib.POP3_SSL:
        """poplib on the implicit-TLS listener; the certificate (SAN 127.0.0.1) is verified."""
        return poplib.POP3_SSL("127.0.0.1", self.pop3s_port, timeout=timeout,
                               context=self.client_context())

    def pop3(self, timeout: float = 10) -> poplib.POP3:
        """poplib on the STLS listener, before STLS."""
        return poplib.POP3("127.0.0.1", self.pop3_port, timeout=timeout)

    @property
    def imaps_port(self) -> int:
        return self.ports["imaps"]

    @property
    def imap_port(self) -> int:
        return self.ports["imap"]

    def imaps(self, timeout: float = 10) -> imaplib.IMAP4_SSL:
        """imaplib on the implicit-TLS listener; the certificate (SAN 127.0.0.1) is verified."""
        return imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, timeout=timeout,
                                 ssl_context=self.client_context())

    def imap(self, timeout: float = 10) -> imaplib.IMAP4:
        """imaplib on the STARTTLS listener, before STARTTLS."""
        return imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=timeout)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def smtp(self, *, starttls: bool = True, timeout: float = 10) -> smtplib.SMTP:
        """smtplib on 587 with STARTTLS done and the certificate verified."""
        s = smtplib.SMTP("127.0.0.1", self.submission_port, timeout=timeout)
        s._host = HOSTNAME  # type: ignore[attr-defined]  # SNI + hostname check
        if starttls:
            s.starttls(context=self.client_context())
        return s

    def smtps(self, timeout: float = 10) -> smtplib.SMTP_SSL:
        s = smtplib.SMTP_SSL(timeout=timeout, context=self.client_context())
        s._host = HOSTNAME  # type: ignore[attr-defined]
        s.connect("127.0.0.1", self.submissions_port)
        return s

    def maildir_files(self, account: str) -> list[Path]:
        root = self.data_dir / "mail" / account
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = root / sub
            if d.is_dir():
                files += sorted(d.iterdir())
        return files

    def run_coro(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def _port_map(bound: dict[str, list[str]]) -> dict[str, int]:
    return {name: int(addrs[0].rsplit(":", 1)[1]) for name, addrs in bound.items()}


def start_thread_daemon(config_path: Path, ca: trustme.CA,
                        loop_kind: str = "asyncio") -> RunningDaemon:
    """The daemon in this process, on its own event loop in a thread (asyncio or uvloop)."""
    config = load_config(config_path)
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    daemon = Daemon(config)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            try:
                await daemon.start()
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            await daemon.run_until_stopped()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, name=f"mailkeep-{loop_kind}", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        raise failure[0]

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(daemon.request_stop)
            thread.join(30)

    return RunningDaemon(root=config_path.parent, ca=ca, ports=_port_map(daemon.bound),
                         data_dir=config.data_dir, stop=stop, daemon=daemon, loop=loop)


def start_process_daemon(config_path: Path, ca: trustme.CA, *args: str,
                         timeout: float = 30,
                         preexec_fn: Callable[[], None] | None = None,
                         launcher: list[str] | None = None) -> RunningDaemon:
    """`mailkeep serve` as a real process; ports come from its --ready-file.
    `preexec_fn` runs in the child before exec (e.g. to lower its open-files limit).
    `launcher`: the command before "serve" (default `python -m mailkeep`), e.g.
    tests/support/killpoint.py with a point to die at."""
    ready = config_path.parent / "ready.json"
    ready.unlink(missing_ok=True)
    log = open(config_path.parent / "daemon.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [*(launcher or [sys.executable, "-m", "mailkeep"]), "serve", "--config",
         str(config_path),
         "--ready-file", str(ready), *args],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            log.close()
            raise RuntimeError("daemon exited: "
                               + (config_path.parent / "daemon.log").read_text())
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("daemon did not become ready")
        time.sleep(0.05)
    bound = json.loads(ready.read_text())["listeners"]

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()

    config = load_config(config_path)
    return RunningDaemon(root=config_path.parent, ca=ca, ports=_port_map(bound),
                         data_dir=config.data_dir, stop=stop, proc=proc)
