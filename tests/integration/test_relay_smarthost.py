"""Smarthost routes: STARTTLS or implicit TLS, AUTH from a credentials file, certificate checks,
and the promise that credentials never travel in plaintext (checked from the server's side).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailkeep.relay.client import OutboundClient
from mailkeep.relay.credentials import Credentials, read_credentials
from mailkeep.relay.envelope import Recipient
from mailkeep.relay.nexthop import Destination
from mailkeep.relay.results import Delivered, TemporaryFailure
from mailkeep.relay.routes import SmarthostRoute
from tests.support.dnsstub import DnsStub, Zone
from tests.support.relay import delivery_config, message, send
from tests.support.upstream import Behaviour, Upstream, Upstreams, server_context, upstreams

USER, PASSWORD = "relayuser", "s3cret pass:with=odd+chars"
# The bait servers offer AUTH without TLS on purpose; aiosmtpd warns about exactly that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def dns() -> Iterator[DnsStub]:
    zone = Zone().mx("partner.test", (10, "mx.partner.test")).a("mx.partner.test", "127.0.0.1")
    with DnsStub(zone) as stub:
        yield stub


@pytest.fixture
def ups() -> Iterator[Upstreams]:
    yield from upstreams()


@dataclass
class Env:
    tmp_path: Path
    ca: trustme.CA
    dns: DnsStub
    ups: Upstreams
    ca_file: Path
    creds: Path

    def client(self, up: Upstream, *, host: str = "127.0.0.1", mx_port: int = 25,
               domains: dict[str, str] | None = None, **route: Any) -> OutboundClient:
        """A client whose default route (or `domains`) is a smarthost route to `up`."""
        table = {"type": "smarthost", "host": host, "port": up.port, **route}
        config = delivery_config(self.tmp_path, self.dns, port=mx_port,
                                 routes={"upstream": table},
                                 **({"domains": domains} if domains is not None
                                    else {"default_route": "upstream"}))
        return OutboundClient(config)


@pytest.fixture
def env(tmp_path: Path, ca: trustme.CA, dns: DnsStub, ups: Upstreams) -> Env:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    creds = tmp_path / "smarthost.secret"
    creds.write_text(f"{USER}\n{PASSWORD}\n")
    creds.chmod(0o600)
    return Env(tmp_path, ca, dns, ups, ca_file, creds)


def assert_no_plaintext_secret(up: Upstream) -> None:
    plain = up.received(tls=False)
    assert PASSWORD.encode() not in plain
    assert b"AUTH" not in plain.upper()
    assert all(tls for _, tls in up.auth_commands)


async def test_starttls_and_auth(env: Env) -> None:
    up = env.ups(starttls=server_context(env.ca, "127.0.0.1"), auth=(USER, PASSWORD))
    client = env.client(up, tls="starttls", ca_file=str(env.ca_file),
                        credentials_file=str(env.creds))
    results = await send(client, ["bob@partner.test", "carol@elsewhere.test"])
    assert all(isinstance(r, Delivered) for r in results), results
    assert results[0].tls is not None and results[0].tls.endswith("(verified)")
    (msg,) = up.messages  # both domains in one transaction through the smarthost
    assert msg.authenticated_as == USER and msg.tls
    assert msg.rcpt_tos == ["bob@partner.test", "carol@elsewhere.test"]
    assert up.auth_commands == [("PLAIN", True)]
    assert_no_plaintext_secret(up)


async def test_implicit_tls_and_auth(env: Env) -> None:
    up = env.ups(implicit_tls=server_context(env.ca, "127.0.0.1"), auth=(USER, PASSWORD))
    client = env.client(up, tls="implicit", ca_file=str(env.ca_file),
                        credentials_file=str(env.creds))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, Delivered), result
    assert up.messages[0].authenticated_as == USER
    assert up.received(tls=False) == b""


async def test_auth_login_when_plain_is_not_offered(env: Env) -> None:
    up = env.ups(starttls=server_context(env.ca, "127.0.0.1"), auth=(USER, PASSWORD),
                 auth_exclude=("PLAIN",))
    client = env.client(up, ca_file=str(env.ca_file), credentials_file=str(env.creds))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, Delivered), result
    assert up.auth_commands == [("LOGIN", True)]


async def test_smarthost_by_name_checks_that_name(env: Env) -> None:
    # "localhost" through the system resolver (/etc/hosts); ::1 may be tried first and refused.
    up = env.ups(starttls=server_context(env.ca, "localhost"))
    client = env.client(up, host="localhost", ca_file=str(env.ca_file))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, Delivered) and result.remote_host.startswith("localhost [")
    assert up.sni == ["localhost"]


async def test_starttls_missing_means_no_auth_and_no_mail(env: Env) -> None:
    # A server (or a man in the middle) offering AUTH in plaintext and no STARTTLS.
    up = env.ups(auth=(USER, PASSWORD), auth_in_plaintext=True)
    client = env.client(up, credentials_file=str(env.creds))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.10"
    assert up.auth_commands == [] and up.messages == []
    assert PASSWORD.encode() not in up.received()


async def test_plaintext_route_never_sends_credentials(env: Env) -> None:
    # parse_delivery refuses tls = "none" with credentials; a route built by hand is refused
    # again where the credentials would be sent.
    up = env.ups(auth=(USER, PASSWORD), auth_in_plaintext=True)
    config = delivery_config(env.tmp_path, env.dns)
    route = SmarthostRoute("raw", "127.0.0.1", up.port, tls="none", credentials_file=env.creds)
    destination = Destination(route, ("partner.test",), "may", (Recipient("bob@partner.test"),))
    result, = await OutboundClient(config).deliver(destination, message())
    assert isinstance(result, TemporaryFailure) and "without TLS" in result.reply.text
    assert up.auth_commands == [] and up.messages == []
    assert PASSWORD.encode() not in up.received()


async def test_rejected_credentials_keep_the_mail_queued(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    up = env.ups(starttls=server_context(env.ca, "127.0.0.1"), auth=(USER, "another password"))
    client = env.client(up, ca_file=str(env.ca_file), credentials_file=str(env.creds))
    with caplog.at_level(logging.DEBUG):
        result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.8"
    assert "535" in result.reply.text
    assert up.messages == [] and not any(c.startswith("MAIL") for c in up.commands())
    assert PASSWORD not in caplog.text and USER in caplog.text


async def test_missing_credentials_file_at_delivery_is_temporary(env: Env) -> None:
    up = env.ups(starttls=server_context(env.ca, "127.0.0.1"), auth=(USER, PASSWORD))
    client = env.client(up, ca_file=str(env.ca_file), credentials_file=str(env.creds))
    env.creds.unlink()
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.3.5"
    assert up.auth_commands == []


async def test_smarthost_certificate_is_checked_by_default(env: Env) -> None:
    up = env.ups(starttls=server_context(env.ca, "not-the-smarthost.test"),
                 auth=(USER, PASSWORD))
    client = env.client(up, ca_file=str(env.ca_file), credentials_file=str(env.creds))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.5"
    assert up.auth_commands == [] and up.messages == []
    assert PASSWORD.encode() not in up.received()


async def test_implicit_tls_certificate_is_checked(env: Env) -> None:
    up = env.ups(implicit_tls=server_context(trustme.CA(), "127.0.0.1"))
    client = env.client(up, tls="implicit", ca_file=str(env.ca_file))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.5"
    assert up.messages == []


async def test_verify_false_encrypts_without_checking(env: Env) -> None:
    up = env.ups(starttls=server_context(trustme.CA(), "self-signed.test"),
                 auth=(USER, PASSWORD))
    client = env.client(up, verify=False, credentials_file=str(env.creds))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, Delivered) and result.tls and "verified" not in result.tls
    assert_no_plaintext_secret(up)


async def test_only_listed_domains_use_the_smarthost(env: Env) -> None:
    mx = env.ups()
    smart = env.ups(starttls=server_context(env.ca, "127.0.0.1"))
    client = env.client(smart, mx_port=mx.port, ca_file=str(env.ca_file),
                        domains={"elsewhere.test": "upstream"})
    r1, r2 = await send(client, ["bob@partner.test", "carol@elsewhere.test"])
    assert isinstance(r1, Delivered) and r1.remote_host.startswith("mx.partner.test")
    assert isinstance(r2, Delivered) and r2.remote_host.startswith("[127.0.0.1]")
    assert [m.rcpt_tos for m in mx.messages] == [["bob@partner.test"]]
    assert [m.rcpt_tos for m in smart.messages] == [["carol@elsewhere.test"]]


async def test_smarthost_tempfail_is_temporary(env: Env) -> None:
    up = env.ups(Behaviour(greeting="421 4.3.2 maintenance"),
                 starttls=server_context(env.ca, "x"))
    client = env.client(up, ca_file=str(env.ca_file))
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.code == 421


async def test_unreadable_ca_file_at_delivery_is_temporary(env: Env) -> None:
    up = env.ups(starttls=server_context(env.ca, "127.0.0.1"))
    client = env.client(up, ca_file=str(env.ca_file))
    env.ca_file.write_text("not a certificate")
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.3.5"
    assert up.connections == 0


def test_credentials_never_in_repr(env: Env) -> None:
    c = read_credentials(env.creds)
    assert c == Credentials(USER, PASSWORD)
    assert PASSWORD not in repr(c) and PASSWORD not in str(c)
