"""Real Thunderbird, headless, driven over Marionette (its remote protocol), to ask its own
account-setup code what it makes of our autoconfig documents.

Thunderbird runs with `--headless --marionette -remote-allow-system-access` on a fresh
profile whose HTTP proxy is our autoconfig listener: when its account setup fetches
http://autoconfig.example.test/mail/config-v1.1.xml, the request (absolute-form, as to any
proxy) reaches mailkeep, so no DNS or /etc/hosts is needed. HTTPS attempts arrive as CONNECT
and are refused (405), so Thunderbird falls back to http as it does for any domain without
an HTTPS autoconfig server.

Marionette's wire format: "<length>:<json>"; commands are [0, id, name, params], replies
[1, id, error, result].
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

# Seconds allowed for Thunderbird to start listening, and for one script to run.
STARTUP_TIMEOUT = 90.0
SCRIPT_TIMEOUT_MS = 30_000


def thunderbird_binary() -> str | None:
    return shutil.which("thunderbird")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_profile(profile: Path, *, marionette_port: int, proxy_port: int) -> None:
    """A profile that talks to nobody but the proxy (our autoconfig listener)."""
    profile.mkdir(parents=True, exist_ok=True)
    prefs: dict[str, Any] = {
        "marionette.port": marionette_port,
        "network.proxy.type": 1,  # manual proxy configuration
        "network.proxy.http": "127.0.0.1",
        "network.proxy.http_port": proxy_port,
        "network.proxy.ssl": "127.0.0.1",
        "network.proxy.ssl_port": proxy_port,
        "network.proxy.no_proxies_on": "",
        "network.proxy.share_proxy_settings": False,
        "mailnews.auto_config_url": "",  # no Mozilla ISPDB lookups
        "mail.shell.checkDefaultClient": False,
        "mail.provider.enabled": False,
        "app.update.enabled": False,
        "app.update.auto": False,
        "extensions.update.enabled": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.connectivity-service.enabled": False,
        "browser.safebrowsing.update.enabled": False,
    }
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


class Marionette:
    """The few Marionette commands the tests need."""

    def __init__(self, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        self.buffer = b""
        self.next_id = 0
        hello = self._receive()
        assert hello.get("marionetteProtocol") == 3, hello

    def _receive(self) -> Any:
        while b":" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("marionette closed the connection")
            self.buffer += chunk
        size, _, rest = self.buffer.partition(b":")
        length = int(size)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("marionette closed the connection")
            rest += chunk
        self.buffer = rest[length:]
        return json.loads(rest[:length])

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        data = json.dumps([0, self.next_id, name, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        kind, msg_id, error, result = self._receive()
        assert (kind, msg_id) == (1, self.next_id)
        if error:
            raise RuntimeError(f"{name}: {error.get('error')}: {error.get('message')}")
        return result

    def run_async(self, script: str, *args: Any) -> Any:
        """Run `script` in Thunderbird's chrome context; it calls `resolve(value)`."""
        body = "const resolve = arguments[arguments.length - 1];\n" + script
        return self.command("WebDriver:ExecuteAsyncScript",
                            {"script": body, "args": list(args)})["value"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Thunderbird:
    """A headless Thunderbird on its own profile, stopped by `stop()`."""

    def __init__(self, profile: Path, proxy_port: int) -> None:
        binary = thunderbird_binary()
        assert binary is not None
        port = _free_port()
        write_profile(profile, marionette_port=port, proxy_port=proxy_port)
        self.log = open(profile.parent / "thunderbird.log", "ab")  # noqa: SIM115
        env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
        self.proc = subprocess.Popen(
            [binary, "--headless", "--marionette", "-remote-allow-system-access",
             "--no-remote", "--profile", str(profile)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.marionette = Marionette(port)
            self.marionette.command("WebDriver:NewSession", {})
            self.marionette.command("WebDriver:SetTimeouts", {"script": SCRIPT_TIMEOUT_MS})
            self.marionette.command("Marionette:SetContext", {"value": "chrome"})
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        marionette = getattr(self, "marionette", None)
        if marionette is not None:
            with contextlib.suppress(Exception):
                marionette.command("Marionette:Quit", {"flags": ["eForceQuit"]})
            marionette.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            # Its own process group (start_new_session): the browser and its content processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
