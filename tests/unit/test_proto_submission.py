"""proto/submission.py: who may send what (RFC 6409), trace fields, message completion."""

from __future__ import annotations

import datetime as dt
import email.utils
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.message import has_bare_cr_or_lf, parse_header_fields, split_message
from mailkeep.proto.submission import (
    RecipientKind,
    Refusal,
    TlsInfo,
    check_envelope_sender,
    check_header_senders,
    classify_recipient,
    complete_message,
    domain_of,
    received_field,
)

OWNED = ("alice@example.test", "a.smith@example.test")
NOW = dt.datetime(2026, 3, 1, 12, 30, 45, tzinfo=dt.UTC)
TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


def msg(*headers: str, body: str = "hello\r\n") -> bytes:
    return ("".join(h + "\r\n" for h in headers) + "\r\n" + body).encode()


def code(refusal: Refusal | None) -> str | None:
    return None if refusal is None else refusal.reply[:9]


# -- envelope sender -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender", ["alice@example.test", "ALICE@Example.TEST", "a.smith@example.test"]
)
def test_envelope_sender_owned(sender: str) -> None:
    assert check_envelope_sender(OWNED, sender) is None


@pytest.mark.parametrize(
    "sender", ["bob@example.test", "", "alice@example.test.", "alice@example.testx", "alice"]
)
def test_envelope_sender_not_owned(sender: str) -> None:
    refusal = check_envelope_sender(OWNED, sender)
    assert code(refusal) == "553 5.7.1"
    assert refusal is not None and f"<{sender}>" in refusal.reply


# -- header senders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        msg("From: alice@example.test", "Subject: hi"),
        msg("From: Alice Smith <ALICE@example.test>"),
        msg('From: "bob@example.test" <a.smith@example.test>'),  # a display name is not an address
        msg("From: alice@example.test, a.smith@example.test"),
        msg("From: alice@example.test", "Sender: a.smith@example.test"),
        msg("Subject: no From at all"),  # complete_message adds one from the envelope
        msg("From: Alice\r\n <alice@example.test>"),
        b"",
    ],
)
def test_header_senders_accepted(message: bytes) -> None:
    assert check_header_senders(OWNED, False, message) is None


def test_multiple_from_refused_even_for_send_as_others() -> None:
    message = msg("From: alice@example.test", "Subject: x", "from: alice@example.test")
    for send_as in (False, True):
        refusal = check_header_senders(OWNED, send_as, message)
        assert code(refusal) == "550 5.6.0"
        assert refusal is not None and "More than one From" in refusal.reply


def test_multiple_sender_refused() -> None:
    message = msg("From: alice@example.test", "Sender: alice@example.test",
                  "Sender: alice@example.test")
    assert code(check_header_senders(OWNED, True, message)) == "550 5.6.0"


def test_obsolete_from_syntax_counts_as_from() -> None:
    # "From : x" is a From field to most readers, so a second one is a second From ...
    message = msg("From: alice@example.test", "From : evil@attacker.example")
    assert code(check_header_senders(OWNED, False, message)) == "550 5.6.0"
    # ... and a lone one is checked like any From.
    refusal = check_header_senders(OWNED, False, msg("From : evil@attacker.example"))
    assert code(refusal) == "553 5.7.1"


@pytest.mark.parametrize(
    "message",
    [
        msg("From: evil@attacker.example"),
        msg("From: Alice <evil@attacker.example>"),
        msg("From: alice@example.test <evil@attacker.example>"),
        msg("From: alice@example.test, evil@attacker.example"),
        msg("From: =?utf-8?q?alice@example.test?= <evil@attacker.example>"),
        msg("From: Alice\r\n <evil@attacker.example>"),
        msg("FROM: evil@attacker.example"),
    ],
)
def test_from_spoof_refused(message: bytes) -> None:
    refusal = check_header_senders(OWNED, False, message)
    assert code(refusal) == "553 5.7.1"
    assert refusal is not None and "is not yours to use" in refusal.reply
    assert "From header" in refusal.reply


def test_sender_spoof_refused() -> None:
    message = msg("From: alice@example.test", "Sender: evil@attacker.example")
    refusal = check_header_senders(OWNED, False, message)
    assert code(refusal) == "553 5.7.1"
    assert refusal is not None and "Sender header" in refusal.reply


@pytest.mark.parametrize(
    "value", ["Alice", "<>", "undisclosed-recipients:;", "alice@example.test, nobody", ","]
)
def test_unparseable_from_refused(value: str) -> None:
    refusal = check_header_senders(OWNED, False, msg(f"From: {value}"))
    assert code(refusal) == "550 5.6.0"
    assert refusal is not None and "Cannot parse the From" in refusal.reply


@pytest.mark.parametrize("header", ["From: ", "From:", "From: alice@example.test\r\nSender: "])
def test_empty_from_or_sender_refused(header: str) -> None:
    message = (header + "\r\n\r\nbody").encode()
    assert code(check_header_senders(OWNED, False, message)) == "550 5.6.0"


def test_line_without_field_name_refused() -> None:
    message = msg("From: alice@example.test", "this line has no colon")
    assert code(check_header_senders(OWNED, False, message)) == "550 5.6.0"
    assert code(check_header_senders(OWNED, True, message)) == "550 5.6.0"


def test_send_as_others_allows_foreign_from_and_sender() -> None:
    message = msg("From: newsletter@other.example", "Sender: someone@else.example")
    assert check_header_senders(OWNED, True, message) is None
    assert check_header_senders(OWNED, False, message) is not None


def test_body_is_not_header() -> None:
    message = msg("From: alice@example.test", body="From: evil@attacker.example\r\n")
    assert check_header_senders(OWNED, False, message) is None


@settings(max_examples=400)
@given(st.binary(max_size=400), st.booleans())
def test_check_header_senders_total_on_any_bytes(data: bytes, send_as: bool) -> None:
    result = check_header_senders(OWNED, send_as, data)
    assert result is None or isinstance(result, Refusal)


@settings(max_examples=400)
@given(st.text(max_size=80), st.text(max_size=40))
def test_check_header_senders_total_on_any_from_value(value: str, sender: str) -> None:
    data = ("From: " + value + "\r\nSender: " + sender + "\r\n\r\nbody").encode(
        "utf-8", "surrogateescape")
    result = check_header_senders(OWNED, False, data)
    assert result is None or isinstance(result, Refusal)
    if result is None:
        # whatever was accepted names only owned addresses
        fields = parse_header_fields(split_message(data)[0])
        pairs = email.utils.getaddresses([f.value for f in fields if f.key in ("from", "sender")])
        assert all(addr.lower() in OWNED for _, addr in pairs if addr)


# -- recipients -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("bob@example.test", RecipientKind.LOCAL),
        ("bob@EXAMPLE.Test", RecipientKind.LOCAL),
        ("bob@example.test.", RecipientKind.LOCAL),
        ("Bob@Example.Test.", RecipientKind.LOCAL),
        ("bob@example.org", RecipientKind.LOCAL),
        ("bob@sub.example.test", RecipientKind.REMOTE),
        ("bob@example.test.evil", RecipientKind.REMOTE),
        ("bob@xexample.test", RecipientKind.REMOTE),
        ("example.test@evil.example", RecipientKind.REMOTE),
        ("bob@example.test@evil.example", RecipientKind.REMOTE),
        ("bob", RecipientKind.REMOTE),
        ("", RecipientKind.REMOTE),
    ],
)
def test_classify_recipient(address: str, kind: RecipientKind) -> None:
    assert classify_recipient(address, ("example.test", "example.org")) is kind


def test_domain_of() -> None:
    assert domain_of("a@B.Example.") == "b.example"
    assert domain_of("a@b@c") == "c"


# -- Received -------------------------------------------------------------------------------------


def received(**kw: object) -> bytes:
    args: dict[str, object] = dict(helo="client.example.test", peer_ip="192.0.2.7",
                                   hostname="mail.example.test", queue_id="Q1", tls=TLS,
                                   authenticated=True, recipients=["bob@example.test"], now=NOW)
    args.update(kw)
    return received_field(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tls", "auth", "protocol"),
    [(TLS, True, "ESMTPSA"), (TLS, False, "ESMTPS"), (None, True, "ESMTPA"),
     (None, False, "ESMTP")],
)
def test_received_protocol_names_rfc3848(tls: TlsInfo | None, auth: bool, protocol: str) -> None:
    text = received(tls=tls, authenticated=auth).decode()
    assert re.search(rf" with {protocol} id Q1\b", text), text


def test_received_shape() -> None:
    raw = received()
    assert raw.endswith(b"\r\n")
    assert not has_bare_cr_or_lf(raw)
    fields = parse_header_fields(raw)
    assert len(fields) == 1 and fields[0].name == "Received"
    value = fields[0].value
    assert value.startswith("from client.example.test ([192.0.2.7])")
    assert "by mail.example.test (mailkeep)" in value
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))" in value
    # the date after the last ";" is a valid RFC 5322 date-time, and it is ours
    date = email.utils.parsedate_to_datetime(value.rpartition(";")[2].strip())
    assert date == NOW


def test_received_without_tls_has_no_using_clause() -> None:
    assert b"using" not in received(tls=None)


def test_received_for_only_with_exactly_one_recipient() -> None:
    assert b"\tfor <bob@example.test>;" in received(recipients=["bob@example.test"])
    two = received(recipients=["bob@example.test", "carol@example.test"])
    assert b"for <" not in two and b"carol" not in two and b"bob@" not in two
    assert b"for <" not in received(recipients=[])


@pytest.mark.parametrize(
    "helo",
    ["evil\r\nX-Injected: yes", "evil\r\n\r\nbody", "a b c", "x\nFrom: boss@example.test",
     "x\rBcc: all", "", "   ", "\t", "x;y", "(comment)", "a\u2028b", "[192.0.2.1]"],
)
def test_hostile_helo_cannot_inject(helo: str) -> None:
    raw = received(helo=helo)
    assert not has_bare_cr_or_lf(raw)
    lines = raw.split(b"\r\n")
    assert lines[-1] == b""
    assert all(ln.startswith(b"\t") for ln in lines[1:-1])
    fields = parse_header_fields(raw)
    assert [f.name for f in fields] == ["Received"]
    words = lines[0].decode().split(" ")
    assert words[:2] == ["Received:", "from"] and words[3] == "([192.0.2.7])"
    assert len(words) == 4


@settings(max_examples=400)
@given(st.text(max_size=60))
def test_any_helo_gives_one_well_formed_received_field(helo: str) -> None:
    raw = received(helo=helo, recipients=["bob@example.test"])
    assert not has_bare_cr_or_lf(raw)
    lines = raw.split(b"\r\n")
    assert lines[0].startswith(b"Received: from ")
    assert len(lines[0].split(b" ")) == 4
    assert all(ln.startswith(b"\t") for ln in lines[1:-1])
    assert [f.name for f in parse_header_fields(raw)] == ["Received"]


def test_hostile_recipient_cannot_inject() -> None:
    raw = received(recipients=['"a\r\nX-Injected: yes"@example.test'])
    assert not has_bare_cr_or_lf(raw)
    assert [f.name for f in parse_header_fields(raw)] == ["Received"]


def test_received_ipv6_address_literal() -> None:
    assert b"([IPv6:2001:db8::1])" in received(peer_ip="2001:db8::1")


# -- complete_message -----------------------------------------------------------------------------

RECEIVED = b"Received: from x ([192.0.2.7])\r\n\tby mail.example.test; now\r\n"


def complete(message: bytes) -> bytes:
    return complete_message(message, received=RECEIVED, hostname="mail.example.test",
                            mail_from="alice@example.test", now=NOW)


def header_keys(data: bytes) -> list[str]:
    return [f.key for f in parse_header_fields(split_message(data)[0])]


def test_complete_adds_missing_date_message_id_from() -> None:
    out = complete(msg("Subject: x"))
    keys = header_keys(out)
    assert keys[0] == "received"
    for key in ("from", "date", "message-id", "subject"):
        assert keys.count(key) == 1, keys
    fields = {f.key: f.value for f in parse_header_fields(split_message(out)[0])}
    assert fields["from"] == "<alice@example.test>"
    assert email.utils.parsedate_to_datetime(fields["date"]) == NOW
    assert fields["message-id"].startswith("<") and fields["message-id"].endswith(
        "@mail.example.test>")
    assert out.endswith(b"\r\n\r\nhello\r\n")


@pytest.mark.parametrize(
    "headers",
    [
        ("From: alice@example.test", "Date: Sun, 1 Mar 2026 00:00:00 +0000",
         "Message-ID: <m1@client>"),
        ("FROM: alice@example.test", "DATE: Sun, 1 Mar 2026 00:00:00 +0000",
         "message-id: <m1@client>"),
        ("From : alice@example.test", "Date : Sun, 1 Mar 2026 00:00:00 +0000",
         "Message-Id : <m1@client>"),
    ],
)
def test_complete_never_duplicates(headers: tuple[str, ...]) -> None:
    original = msg(*headers, "Subject: x")
    out = complete(original)
    assert out == RECEIVED + original
    keys = header_keys(out)
    assert keys.count("from") == keys.count("date") == keys.count("message-id") == 1


def test_complete_adds_only_what_is_missing() -> None:
    out = complete(msg("From: alice@example.test", "Subject: x"))
    keys = header_keys(out)
    assert (keys.count("from"), keys.count("date"), keys.count("message-id")) == (1, 1, 1)
    assert b"From: <alice@example.test>" not in out


def test_complete_keeps_original_bytes() -> None:
    original = b"Subject: \xc3\xa9t\xc3\xa9\r\nX-Raw: \xff\r\n\r\nbody \xfe\r\n.\r\n"
    out = complete(original)
    assert out.startswith(RECEIVED + b"Subject: \xc3\xa9t\xc3\xa9\r\nX-Raw: \xff\r\n")
    assert out.endswith(b"\r\n\r\nbody \xfe\r\n.\r\n")


def test_complete_message_ids_are_unique() -> None:
    ids = set()
    for _ in range(50):
        fields = parse_header_fields(split_message(complete(msg("Subject: x")))[0])
        ids.add(next(f.value for f in fields if f.key == "message-id"))
    assert len(ids) == 50


def test_complete_message_without_header_section() -> None:
    out = complete(b"\r\njust a body\r\n")
    assert header_keys(out) == ["received", "from", "date", "message-id"]
    assert out.endswith(b"\r\n\r\njust a body\r\n")


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["From: alice@example.test", "Date: x", "Message-ID: <a@b>",
                                 "Subject: s", "To: bob@example.test"]), max_size=5))
def test_complete_each_field_exactly_once_when_unique(headers: list[str]) -> None:
    headers = list(dict.fromkeys(headers))
    out = complete(msg(*headers))
    keys = header_keys(out)
    for key in ("from", "date", "message-id"):
        assert keys.count(key) == 1
    assert keys[0] == "received"
    assert out.endswith(b"\r\n\r\nhello\r\n")

