"""Outbound delivery end to end: relay/client.py against fake upstreams (aiosmtpd) found through
a real DNS server, all on 127.0.0.1. The upstreams record every byte with whether TLS was on, so
the TLS and credential promises are checked from the server's side.

Every MX name resolves to 127.0.0.1 and the upstream behaves per connection (the first
connection can tempfail, the second accept): the result's remote host then says which MX
delivered, and so in which order they were tried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import uvloop

from mailkeep.relay.client import MAX_ATTEMPTS, OutboundClient
from mailkeep.relay.envelope import Recipient
from mailkeep.relay.results import Delivered, PermanentFailure, TemporaryFailure
from tests.support.dnsstub import DnsStub, Zone
from tests.support.relay import delivery_config, message, send
from tests.support.upstream import Behaviour, Upstream, Upstreams, server_context, upstreams

# Bounds every test: a hang is a failure, not a stuck run.
TEST_TIMEOUT = 30.0
MX_NAMES = ("mx1.partner.test", "mx2.partner.test")


@pytest.fixture
def zone() -> Zone:
    z = Zone()
    z.mx("partner.test", (10, "mx1.partner.test"), (20, "mx2.partner.test"))
    z.a("mx1.partner.test", "127.0.0.1")
    z.a("mx2.partner.test", "127.0.0.1")
    z.a("plain.test", "127.0.0.1")           # no MX: implicit MX
    z.null_mx("nomail.test")
    z.servfail("broken.test")
    z.mx("lame.test", (10, "gone.lame.test"))  # MX target without an address
    return z


@pytest.fixture
def dns(zone: Zone) -> Iterator[DnsStub]:
    with DnsStub(zone) as stub:
        yield stub


@pytest.fixture
def ups() -> Iterator[Upstreams]:
    yield from upstreams()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def client_for(tmp_path: Path, dns: DnsStub, up: Upstream, **delivery: object) -> OutboundClient:
    return OutboundClient(delivery_config(tmp_path, dns, port=up.port, **delivery))


def only(results: list) -> object:  # type: ignore[type-arg]
    assert len(results) == 1, results
    return results[0]


# -- MX order and fallback --------------------------------------------------------------------

async def test_delivers_to_the_best_mx(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered), result
    assert result.remote_host.startswith("mx1.partner.test [127.0.0.1]")
    assert result.reply.code == 250 and result.tls is None
    assert up.connections == 1
    (msg,) = up.messages
    assert msg.rcpt_tos == ["bob@partner.test"] and msg.mail_from == "alice@example.test"
    assert msg.data.replace(b"\r\n", b"\n") == message().data.replace(b"\r\n", b"\n")
    assert "QUIT" in up.commands()


async def test_tempfail_greeting_moves_to_the_next_mx(tmp_path: Path, dns: DnsStub,
                                                      ups: Upstreams) -> None:
    up = ups(Behaviour(greeting="421 4.3.2 try again later"), Behaviour())
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered), result
    assert result.remote_host.startswith("mx2.partner.test")
    assert up.connections == 2 and len(up.messages) == 1


async def test_5xx_greeting_also_moves_on(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(greeting="554 5.3.2 no service here"), Behaviour())
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx2.")


async def test_ehlo_4xx_moves_on(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(ehlo="421 4.7.0 too busy"), Behaviour())
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx2.")


async def test_connection_refused_moves_on(tmp_path: Path, zone: Zone, dns: DnsStub,
                                           ups: Upstreams) -> None:
    # mx1 only has ::1, where nothing listens (refused, or no IPv6 at all): a failed connect.
    zone.remove("mx1.partner.test").aaaa("mx1.partner.test", "::1")
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx2.")
    assert up.connections == 1


async def test_every_mx_failing_is_temporary(tmp_path: Path, dns: DnsStub,
                                             ups: Upstreams) -> None:
    up = ups(Behaviour(greeting="421 4.3.2 busy"))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure), result
    assert result.reply.code == 421 and result.reply.remote
    assert up.connections == 2 and up.messages == []


async def test_nothing_listening_is_temporary(tmp_path: Path, dns: DnsStub,
                                              ups: Upstreams) -> None:
    up = ups()
    up.stop()  # the port is closed now
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure)
    assert result.reply.enhanced == "4.4.1" and not result.reply.remote


async def test_attempts_are_bounded(tmp_path: Path, zone: Zone, dns: DnsStub,
                                    ups: Upstreams) -> None:
    zone.mx("many.test", *((i, f"mx{i}.many.test") for i in range(MAX_ATTEMPTS + 5)))
    for i in range(MAX_ATTEMPTS + 5):
        zone.a(f"mx{i}.many.test", "127.0.0.1")
    up = ups(Behaviour(greeting="421 4.3.2 busy"))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@many.test"]))
    assert isinstance(result, TemporaryFailure)
    assert up.connections == MAX_ATTEMPTS


async def test_implicit_mx(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), ["carol@plain.test"]))
    assert isinstance(result, Delivered) and result.remote_host.startswith("plain.test [")


# -- DNS outcomes: no connection at all -------------------------------------------------------

@pytest.mark.parametrize(("rcpt", "kind", "status"), [
    ("x@nomail.test", PermanentFailure, "5.1.10"),   # RFC 7505 null MX
    ("x@nowhere.test", PermanentFailure, "5.1.2"),   # NXDOMAIN
    ("x@broken.test", TemporaryFailure, "4.4.3"),    # SERVFAIL
    ("x@lame.test", TemporaryFailure, "4.4.4"),      # MX without address
])
async def test_dns_outcomes(tmp_path: Path, dns: DnsStub, ups: Upstreams, *, rcpt: str,
                            kind: type, status: str) -> None:
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), [rcpt]))
    assert isinstance(result, kind), result
    assert result.reply.status == status and not result.reply.remote
    assert up.connections == 0


async def test_null_mx_reply_is_556(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    result = only(await send(client_for(tmp_path, dns, ups()), ["x@nomail.test"]))
    assert isinstance(result, PermanentFailure) and result.reply.code == 556


async def test_dns_timeout_is_temporary(tmp_path: Path, zone: Zone, dns: DnsStub,
                                        ups: Upstreams) -> None:
    zone.slow("partner.test")
    config = delivery_config(tmp_path, dns, port=ups().port, dns_timeout=0.5)
    result = only(await send(OutboundClient(config), ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.4.3"


# -- per-recipient replies --------------------------------------------------------------------

async def test_per_recipient_mix(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(rcpt={"busy@partner.test": "450 4.2.1 mailbox busy",
                             "gone@partner.test": "550 5.1.1 no such user"}))
    results = await send(client_for(tmp_path, dns, up),
                         ["ok@partner.test", "busy@partner.test", "gone@partner.test"])
    ok, busy, gone = results
    assert isinstance(ok, Delivered)
    assert isinstance(busy, TemporaryFailure) and str(busy.reply) == "450 4.2.1 mailbox busy"
    assert busy.remote_host is not None and busy.remote_host.startswith("mx1.")
    assert isinstance(gone, PermanentFailure) and gone.status == "5.1.1"
    assert gone.reply.text == "no such user" and gone.reply.remote
    (msg,) = up.messages
    assert msg.rcpt_tos == ["ok@partner.test"]
    assert up.connections == 1  # per-recipient answers are final: no next MX


async def test_all_recipients_refused_sends_no_data(tmp_path: Path, dns: DnsStub,
                                                    ups: Upstreams) -> None:
    up = ups(Behaviour(rcpt={"a@partner.test": "550 5.1.1 no", "b@partner.test": "451 later"}))
    a, b = await send(client_for(tmp_path, dns, up), ["a@partner.test", "b@partner.test"])
    assert isinstance(a, PermanentFailure) and isinstance(b, TemporaryFailure)
    assert b.reply.enhanced is None and b.reply.status == "4.0.0"
    assert "DATA" not in up.commands() and up.messages == []


@pytest.mark.parametrize(("reply", "kind"), [("451 4.3.0 try later", TemporaryFailure),
                                              ("554 5.7.1 looks like spam", PermanentFailure)])
async def test_data_reply_applies_to_accepted_recipients(tmp_path: Path, dns: DnsStub,
                                                         ups: Upstreams, reply: str,
                                                         kind: type) -> None:
    up = ups(Behaviour(data=reply, rcpt={"gone@partner.test": "550 5.1.1 no such user"}))
    a, b, gone = await send(client_for(tmp_path, dns, up),
                            ["a@partner.test", "b@partner.test", "gone@partner.test"])
    assert isinstance(a, kind) and isinstance(b, kind)
    assert str(a.reply) == reply and a.reply.remote
    assert isinstance(gone, PermanentFailure) and gone.status == "5.1.1"
    assert up.connections == 1


@pytest.mark.parametrize(("reply", "kind"), [("451 4.3.0 later", TemporaryFailure),
                                              ("550 5.7.1 sender refused", PermanentFailure)])
async def test_mail_refusal_is_final_for_all(tmp_path: Path, dns: DnsStub, ups: Upstreams,
                                             reply: str, kind: type) -> None:
    up = ups(Behaviour(mail=reply), Behaviour())
    a, b = await send(client_for(tmp_path, dns, up), ["a@partner.test", "b@partner.test"])
    assert isinstance(a, kind) and isinstance(b, kind) and str(a.reply) == reply
    assert up.connections == 1 and up.messages == []  # no next MX after MAIL


async def test_null_sender(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"],
                             message(sender="")))
    assert isinstance(result, Delivered)
    assert up.messages[0].mail_from == ""
    assert "MAIL FROM:<>" in up.commands()


async def test_bad_addresses_fail_before_connecting(tmp_path: Path, dns: DnsStub,
                                                    ups: Upstreams) -> None:
    up = ups()
    results = await send(client_for(tmp_path, dns, up),
                         ["no-at-sign", "a b@partner.test", "x@[127.0.0.1]",
                          "evil@partner.test> NOTIFY=NEVER",
                          # RFC 5321 §4.1.3: a bare IP address is no domain to look up.
                          "x@127.0.0.1", "x@2130706433", "x@127.1", "x@0x7f000001"])
    assert len(results) == 8
    assert all(isinstance(r, PermanentFailure) and r.status == "5.1.3" for r in results)
    assert up.connections == 0
    assert dns.queries == []


# -- dropped connections and stalls -----------------------------------------------------------

@pytest.mark.parametrize("stage", ["greeting", "EHLO", "MAIL", "RCPT", "DATA"])
async def test_dropped_connection_is_temporary(tmp_path: Path, dns: DnsStub, ups: Upstreams,
                                               stage: str) -> None:
    up = ups(Behaviour(drop=stage))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure), result
    assert up.messages == []
    # Before DATA nothing can have been delivered, so the next MX is tried at once; from
    # DATA on, the message may have gone through: no second copy now, the queue retries.
    assert up.connections == (1 if stage == "DATA" else 2)


async def test_drop_before_data_then_next_mx_delivers(tmp_path: Path, dns: DnsStub,
                                                      ups: Upstreams) -> None:
    up = ups(Behaviour(drop="RCPT"), Behaviour())
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx2.")


async def test_drop_after_the_message_is_unconfirmed_and_not_retried_elsewhere(
        tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(drop="DATA-END"), Behaviour())
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure)
    assert "unconfirmed" in result.reply.text and result.reply.status == "4.4.2"
    assert up.connections == 1


@pytest.mark.parametrize("stage", ["greeting", "EHLO", "MAIL", "RCPT", "DATA", "DATA-END"])
async def test_stalled_server_times_out_temporarily(tmp_path: Path, dns: DnsStub,
                                                    ups: Upstreams, stage: str) -> None:
    up = ups(Behaviour(stall=stage))
    client = client_for(tmp_path, dns, up, command_timeout=0.3, data_timeout=0.3)
    async with asyncio.timeout(TEST_TIMEOUT):
        result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure), result
    assert up.messages == []
    assert up.connections == (1 if stage.startswith("DATA") else 2)


# -- TLS policy -------------------------------------------------------------------------------

async def test_opportunistic_starttls(tmp_path: Path, ca: trustme.CA, dns: DnsStub,
                                      ups: Upstreams) -> None:
    # An unknown CA and a wrong name: `may` encrypts without checking (RFC 7435).
    up = ups(starttls=server_context(trustme.CA(), "someone-else.test"))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.tls is not None
    assert "verified" not in result.tls
    assert up.messages[0].tls
    assert b"MAIL FROM" not in up.received(tls=False)
    assert up.sni == ["mx1.partner.test"]


async def test_may_without_starttls_goes_plaintext(tmp_path: Path, dns: DnsStub,
                                                   ups: Upstreams) -> None:
    up = ups()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.tls is None
    assert not up.messages[0].tls


async def test_may_retries_plaintext_after_a_failed_handshake(
        tmp_path: Path, ca: trustme.CA, dns: DnsStub, ups: Upstreams,
        caplog: pytest.LogCaptureFixture) -> None:
    # "220" to STARTTLS, then no TLS: the handshake fails on the client side.
    up = ups(Behaviour(starttls="220 2.0.0 go ahead (not really)"), Behaviour(),
             starttls=server_context(ca, *MX_NAMES))
    with caplog.at_level(logging.WARNING, logger="mailkeep.relay"):
        result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.tls is None
    assert result.remote_host.startswith("mx1.")  # the same host, without STARTTLS
    assert up.connections == 2
    assert "retrying without TLS" in caplog.text


async def test_may_goes_on_after_starttls_is_refused(tmp_path: Path, ca: trustme.CA,
                                                     dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(starttls="454 4.7.0 TLS not available now"),
             starttls=server_context(ca, *MX_NAMES))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered) and result.tls is None and up.connections == 1


@pytest.mark.parametrize("policy", ["encrypt", "verify"])
async def test_required_tls_never_downgrades_when_starttls_is_missing(
        tmp_path: Path, dns: DnsStub, ups: Upstreams, policy: str) -> None:
    up = ups()  # no STARTTLS: as if a man in the middle stripped it
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": policy})
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure), result
    assert result.reply.status == "4.7.10"
    assert up.messages == [] and up.connections == 2
    assert not any(c.startswith(("MAIL", "RCPT", "DATA")) for c in up.commands())


@pytest.mark.parametrize("policy", ["encrypt", "verify"])
@pytest.mark.parametrize("behaviour", [
    Behaviour(starttls="454 4.7.0 TLS not available"),
    Behaviour(starttls="220 2.0.0 go ahead (not really)"),
    Behaviour(drop="STARTTLS"),
])
async def test_required_tls_never_downgrades_when_starttls_fails(
        tmp_path: Path, ca: trustme.CA, dns: DnsStub, ups: Upstreams, *, policy: str,
        behaviour: Behaviour) -> None:
    up = ups(behaviour, starttls=server_context(ca, *MX_NAMES))
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": policy})
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure), result
    assert up.messages == []
    assert not any(c.startswith(("MAIL", "RCPT")) for c in up.commands(tls=False))


async def test_verify_refuses_a_wrong_certificate(tmp_path: Path, ca: trustme.CA,
                                                  ca_file: Path, dns: DnsStub,
                                                  ups: Upstreams) -> None:
    up = ups(starttls=server_context(ca, "someone-else.test"))
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": "verify"},
                        ca_file=str(ca_file))
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.5"
    assert "certificate" in result.reply.text
    assert up.messages == [] and b"MAIL" not in up.received()
    assert up.connections == 2


async def test_verify_refuses_an_unknown_ca(tmp_path: Path, ca_file: Path, dns: DnsStub,
                                            ups: Upstreams) -> None:
    up = ups(starttls=server_context(trustme.CA(), *MX_NAMES))
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": "verify"},
                        ca_file=str(ca_file))
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, TemporaryFailure) and up.messages == []


async def test_verify_delivers_with_a_good_certificate(tmp_path: Path, ca: trustme.CA,
                                                       ca_file: Path, dns: DnsStub,
                                                       ups: Upstreams) -> None:
    up = ups(starttls=server_context(ca, *MX_NAMES))
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": "verify"},
                        ca_file=str(ca_file))
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, Delivered), result
    assert result.tls is not None and result.tls.endswith("(verified)")
    assert up.messages[0].tls


async def test_encrypt_accepts_any_certificate(tmp_path: Path, dns: DnsStub,
                                               ups: Upstreams) -> None:
    up = ups(starttls=server_context(trustme.CA(), "someone-else.test"))
    client = client_for(tmp_path, dns, up, tls_policy={"partner.test": "encrypt"})
    result = only(await send(client, ["bob@partner.test"]))
    assert isinstance(result, Delivered) and up.messages[0].tls


async def test_ehlo_is_repeated_after_starttls(tmp_path: Path, ca: trustme.CA, dns: DnsStub,
                                               ups: Upstreams) -> None:
    up = ups(starttls=server_context(ca, *MX_NAMES))
    await send(client_for(tmp_path, dns, up), ["bob@partner.test"])
    assert [c.split()[0] for c in up.commands(tls=False)] == ["EHLO", "STARTTLS"]
    assert up.commands(tls=True)[0] == "EHLO relay.mailkeep.test"


async def test_ehlo_refused_falls_back_to_helo(tmp_path: Path, dns: DnsStub,
                                               ups: Upstreams) -> None:
    up = ups(Behaviour(ehlo="502 5.5.1 EHLO not implemented"))
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"]))
    assert isinstance(result, Delivered)
    assert "HELO relay.mailkeep.test" in up.commands()


# -- message features -------------------------------------------------------------------------

async def test_dsn_parameters_are_passed_on(tmp_path: Path, dns: DnsStub,
                                            ups: Upstreams) -> None:
    up = ups(dsn=True)
    rcpt = Recipient("bob@partner.test", notify=("SUCCESS", "FAILURE"),
                     orcpt="Bob+tag@partner.test")
    result = only(await send(client_for(tmp_path, dns, up), [rcpt],
                             message(ret="HDRS", envid="env id=1")))
    assert isinstance(result, Delivered) and result.remote_dsn
    msg = up.messages[0]
    assert "RET=HDRS" in msg.mail_params and "ENVID=env+20id+3D1" in msg.mail_params
    assert msg.rcpt_params["bob@partner.test"] == ["NOTIFY=SUCCESS,FAILURE",
                                                   "ORCPT=rfc822;Bob+2Btag@partner.test"]


async def test_dsn_parameters_withheld_when_not_offered(tmp_path: Path, dns: DnsStub,
                                                        ups: Upstreams) -> None:
    up = ups(dsn=False)  # the fake answers 555 to DSN parameters it did not offer
    rcpt = Recipient("bob@partner.test", notify=("SUCCESS",), orcpt="bob@partner.test")
    result = only(await send(client_for(tmp_path, dns, up), [rcpt],
                             message(ret="FULL", envid="x")))
    assert isinstance(result, Delivered) and not result.remote_dsn
    joined = "\n".join(up.commands())
    assert "NOTIFY=" not in joined and "RET=" not in joined


async def test_smtputf8_needed_but_not_offered_is_permanent(tmp_path: Path, dns: DnsStub,
                                                            ups: Upstreams) -> None:
    up = ups(smtputf8=False)
    result = only(await send(client_for(tmp_path, dns, up), ["jörg@partner.test"]))
    assert isinstance(result, PermanentFailure) and result.status == "5.6.7"
    assert not result.reply.remote
    assert not any(c.startswith("MAIL") for c in up.commands())


async def test_smtputf8_used_when_offered(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(smtputf8=True)
    result = only(await send(client_for(tmp_path, dns, up), ["jörg@partner.test"]))
    assert isinstance(result, Delivered), result
    assert "SMTPUTF8" in up.messages[0].mail_params
    assert up.messages[0].rcpt_tos == ["jörg@partner.test"]


async def test_utf8_headers_flag_needs_smtputf8(tmp_path: Path, dns: DnsStub,
                                                ups: Upstreams) -> None:
    up = ups(smtputf8=False)
    data = "Subject: grüße\r\n\r\nhallo\r\n".encode()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"],
                             message(data, smtputf8=True)))
    assert isinstance(result, PermanentFailure) and result.status == "5.6.9"


async def test_8bit_body_uses_8bitmime(tmp_path: Path, dns: DnsStub, ups: Upstreams) -> None:
    up = ups()
    data = "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n".encode()
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"], message(data)))
    assert isinstance(result, Delivered)
    assert "BODY=8BITMIME" in up.messages[0].mail_params
    assert "Grüße".encode() in up.messages[0].data


async def test_8bit_body_without_8bitmime_is_permanent(tmp_path: Path, dns: DnsStub,
                                                       ups: Upstreams) -> None:
    up = ups(eightbitmime=False)
    result = only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"],
                             message(b"Subject: x\r\n\r\n\xe9t\xe9\r\n")))
    assert isinstance(result, PermanentFailure) and result.status == "5.6.3"
    assert up.messages == []


async def test_size_is_declared_and_respected(tmp_path: Path, dns: DnsStub,
                                              ups: Upstreams) -> None:
    up = ups(size=10_000)
    assert isinstance(only(await send(client_for(tmp_path, dns, up), ["bob@partner.test"])),
                      Delivered)
    assert f"SIZE={len(message().data)}" in up.messages[0].mail_params
    small = ups(size=50)
    result = only(await send(client_for(tmp_path, dns, small), ["bob@partner.test"]))
    assert isinstance(result, PermanentFailure) and result.status == "5.3.4"
    assert small.messages == [] and not any(c.startswith("MAIL") for c in small.commands())


async def test_recipients_of_one_domain_share_a_transaction(tmp_path: Path, dns: DnsStub,
                                                            ups: Upstreams) -> None:
    up = ups()
    results = await send(client_for(tmp_path, dns, up),
                         ["a@partner.test", "b@PARTNER.test", "c@plain.test"])
    assert all(isinstance(r, Delivered) for r in results)
    assert sorted(len(m.rcpt_tos) for m in up.messages) == [1, 2]


# -- the same client under uvloop -------------------------------------------------------------

@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_tls_fallback_timeouts_and_implicit_tls_on_both_loops(
        tmp_path: Path, ca: trustme.CA, ca_file: Path, dns: DnsStub, ups: Upstreams, *,
        loop_kind: str) -> None:
    """One pass over the socket-level paths (sock_connect, STARTTLS, implicit TLS over a
    connected socket, timeouts) on the loop the daemon may run on."""
    good = ups(Behaviour(greeting="421 4.3.2 busy"), Behaviour(),
               starttls=server_context(ca, *MX_NAMES))
    wrong = ups(starttls=server_context(ca, "someone-else.test"))
    stalled = ups(Behaviour(stall="MAIL"))
    implicit = ups(implicit_tls=server_context(ca, "127.0.0.1"))
    verify = {"tls_policy": {"partner.test": "verify"}, "ca_file": str(ca_file)}

    async def scenario() -> list[object]:
        async with asyncio.timeout(TEST_TIMEOUT):
            smart = {"routes": {"up": {"type": "smarthost", "host": "127.0.0.1",
                                       "port": implicit.port, "tls": "implicit"}},
                     "default_route": "up", "ca_file": str(ca_file)}
            return [
                only(await send(client_for(tmp_path, dns, good, **verify), ["a@partner.test"])),
                only(await send(client_for(tmp_path, dns, wrong, **verify), ["b@partner.test"])),
                only(await send(client_for(tmp_path, dns, stalled, command_timeout=0.3),
                                ["c@partner.test"])),
                only(await send(client_for(tmp_path, dns, implicit, **smart),
                                ["d@partner.test"])),
            ]

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        delivered, refused, timed_out, smarthost = runner.run(scenario())
    assert isinstance(delivered, Delivered) and delivered.remote_host.startswith("mx2.")
    assert delivered.tls is not None and delivered.tls.endswith("(verified)")
    assert isinstance(refused, TemporaryFailure) and refused.reply.status == "4.7.5"
    assert wrong.messages == []
    assert isinstance(timed_out, TemporaryFailure) and stalled.messages == []
    assert isinstance(smarthost, Delivered) and implicit.messages[0].tls
