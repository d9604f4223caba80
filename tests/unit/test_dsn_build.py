"""relay/dsn.py: RFC 3464 DSNs, built and then parsed back with Python's email package."""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import email.utils
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.dsn import (
    MailDsnParams,
    NotifyOn,
    OriginalRecipient,
    Ret,
    utf8_addr_decode,
)
from mailkeep.proto.message import split_message
from mailkeep.relay.dsn import (
    DEFAULT_DELAY_WARNING,
    MAX_DIAGNOSTIC,
    RETURN_CONTENT_LIMIT,
    Action,
    Dsn,
    NoDsn,
    NoDsnReason,
    OriginalMessage,
    RecipientReport,
    auto_submitted,
    build_dsn,
    delay_notice_due,
    is_automatic,
    is_delivery_report,
    suppression_reason,
    wants_report,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
ARRIVAL = NOW - dt.timedelta(hours=5)
MTA = "mail.example.com"
ORIGINAL = (b"From: Alice <alice@example.com>\r\n"
            b"To: bob@example.net, carol@example.net\r\n"
            b"Subject: quarterly figures\r\n"
            b"Date: Sun, 01 Mar 2026 07:00:00 +0000\r\n"
            b"Message-ID: <orig-1@example.com>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"\r\n"
            b"Hello Bob,\r\n\r\nthe figures.\r\n")


def original(content: bytes = ORIGINAL, sender: str = "alice@example.com",
             ret: Ret | None = None, envid: str | None = None) -> OriginalMessage:
    return OriginalMessage(sender, content, ARRIVAL, MailDsnParams(ret, envid))


def failed(rcpt: str = "bob@example.net", **kw: object) -> RecipientReport:
    args: dict[str, object] = {
        "remote_mta": "mx.example.net",
        "diagnostic": f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        "last_attempt": NOW,
    }
    args.update(kw)
    return RecipientReport(rcpt, Action.FAILED, "5.1.1", **args)  # type: ignore[arg-type]


def delayed(rcpt: str = "carol@example.net", **kw: object) -> RecipientReport:
    args: dict[str, object] = {
        "remote_mta": "mx.example.net",
        "diagnostic": "451 4.7.1 Greylisted, try again later",
        "last_attempt": NOW,
        "will_retry_until": ARRIVAL + dt.timedelta(days=5),
    }
    args.update(kw)
    return RecipientReport(rcpt, Action.DELAYED, "4.7.1", **args)  # type: ignore[arg-type]


def build(orig: OriginalMessage, *reports: RecipientReport, **kw: object) -> Dsn:
    result = build_dsn(orig, reports, reporting_mta=MTA, now=NOW, **kw)  # type: ignore[arg-type]
    assert isinstance(result, Dsn), result
    return result


def parse(dsn: Dsn) -> Message:
    if dsn.needs_smtputf8:
        # RFC 6532 header fields are UTF-8; the bytes parser would keep them as surrogates.
        return email.message_from_string(dsn.message.decode("utf-8"),
                                         policy=email.policy.default)
    return email.message_from_bytes(dsn.message, policy=email.policy.default)


def parts(msg: Message) -> list[Message]:
    assert msg.get_content_type() == "multipart/report"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def status_blocks(msg: Message) -> tuple[Message, list[Message]]:
    """(per-message fields, [per-recipient fields]) of the message/delivery-status part."""
    status = parts(msg)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return blocks[0], blocks[1:]


def human(msg: Message) -> str:
    part = parts(msg)[0]
    assert part.get_content_type() == "text/plain"
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content


def date_of(value: str | None) -> dt.datetime:
    assert value is not None
    return email.utils.parsedate_to_datetime(value)


def assert_well_formed(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


# -- the failure report ---------------------------------------------------------------------------

def test_failure_with_ret_full_every_field() -> None:
    report = failed(original_recipient=OriginalRecipient("rfc822", "Bob@Example.NET"),
                    notify=frozenset({NotifyOn.FAILURE}))
    dsn = build(original(ret=Ret.FULL, envid="QQ314159"), report)
    assert dsn.envelope_sender == ""  # RFC 5321 §4.5.5: the null reverse-path
    assert dsn.envelope_recipient == "alice@example.com"
    assert dsn.reported == (report,)
    assert not dsn.needs_8bitmime and not dsn.needs_smtputf8
    assert_well_formed(dsn.message)

    msg = parse(dsn)
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{MTA}"
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert date_of(msg["Date"]) == NOW
    assert msg["Message-ID"].endswith(f"@{MTA}>")
    assert msg["In-Reply-To"] == "<orig-1@example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_param("report-type") == "delivery-status"
    assert len(parts(msg)) == 3

    text = human(msg)
    assert "<bob@example.net>: failed (5.1.1)" in text
    assert "User unknown" in text and "mx.example.net" in text

    per_message, recipients = status_blocks(msg)
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Reporting-MTA"] == f"dns; {MTA}"
    assert date_of(per_message["Arrival-Date"]) == ARRIVAL
    assert len(recipients) == 1
    r = recipients[0]
    assert r["Original-Recipient"] == "rfc822; Bob@Example.NET"
    assert r["Final-Recipient"] == "rfc822; bob@example.net"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; mx.example.net"
    assert " ".join(r["Diagnostic-Code"].split()) == (
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown")
    assert date_of(r["Last-Attempt-Date"]) == NOW
    assert r["Will-Retry-Until"] is None

    returned = parts(msg)[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()
    assert isinstance(inner, list) and len(inner) == 1
    assert inner[0]["Subject"] == "quarterly figures"
    assert inner[0]["Message-ID"] == "<orig-1@example.com>"
    assert inner[0].get_content().replace("\r\n", "\n") == "Hello Bob,\n\nthe figures.\n"
    # And byte for byte, between the part's header and the closing boundary:
    assert b"\r\n\r\n" + ORIGINAL + b"\r\n--" in dsn.message


@pytest.mark.parametrize("ret", [Ret.HDRS, None])
def test_failure_without_ret_full_returns_the_headers(ret: Ret | None) -> None:
    dsn = build(original(ret=ret), failed())
    msg = parse(dsn)
    returned = parts(msg)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    header, _ = split_message(ORIGINAL)
    assert returned.get_payload(decode=True) == header
    assert b"the figures" not in dsn.message
    per_message, _ = status_blocks(msg)
    assert per_message["Original-Envelope-Id"] is None


def test_several_recipients_in_one_report() -> None:
    dsn = build(original(), failed("bob@example.net"), failed("dave@example.net"),
                delayed("carol@example.net"))
    msg = parse(dsn)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    _, recipients = status_blocks(msg)
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in recipients] == [
        ("rfc822; bob@example.net", "failed", "5.1.1"),
        ("rfc822; dave@example.net", "failed", "5.1.1"),
        ("rfc822; carol@example.net", "delayed", "4.7.1"),
    ]
    text = human(msg)
    assert text.index("bob@example.net") < text.index("carol@example.net")
    assert "still being attempted" in text


def test_local_diagnostic_is_not_typed_smtp() -> None:
    dsn = build(original(), failed(diagnostic="connection to mx.example.net timed out",
                                   remote_mta=None))
    _, (r,) = status_blocks(parse(dsn))
    assert r["Diagnostic-Code"] == "X-mailkeep; connection to mx.example.net timed out"
    assert r["Remote-MTA"] is None


# -- the delay notice and the success report ------------------------------------------------------

def test_delay_notice() -> None:
    dsn = build(original(ret=Ret.FULL, envid="E1"), delayed())
    msg = parse(dsn)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert msg["Auto-Submitted"] == "auto-replied"
    per_message, (r,) = status_blocks(msg)
    assert per_message["Original-Envelope-Id"] == "E1"
    assert r["Action"] == "delayed"
    assert r["Status"] == "4.7.1"
    assert date_of(r["Will-Retry-Until"]) == ARRIVAL + dt.timedelta(days=5)
    assert "Greylisted" in r["Diagnostic-Code"]
    # RFC 3461 §4.3: RET=FULL is about failure reports; a delay notice returns headers only.
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    assert "you do not need to send it again" in human(msg)


@pytest.mark.parametrize("action", [Action.DELIVERED, Action.RELAYED, Action.EXPANDED])
def test_success_report_when_asked(action: Action) -> None:
    report = RecipientReport("bob@example.net", action, "2.0.0",
                             notify=frozenset({NotifyOn.SUCCESS}), remote_mta="mx.example.net",
                             diagnostic="250 2.0.0 Ok: queued as 4AB2")
    dsn = build(original(ret=Ret.FULL), report)
    msg = parse(dsn)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    _, (r,) = status_blocks(msg)
    assert r["Action"] == action.value
    assert r["Status"] == "2.0.0"
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"


# -- NOTIFY (RFC 3461 §4.1) ---------------------------------------------------------------

F, D, S = NotifyOn.FAILURE, NotifyOn.DELAY, NotifyOn.SUCCESS


@pytest.mark.parametrize(("notify", "action", "wanted"), [
    (None, Action.FAILED, True),       # the default: failures ...
    (None, Action.DELAYED, True),      # ... and delays,
    (None, Action.DELIVERED, False),   # never success
    (frozenset(), Action.FAILED, False),   # NEVER
    (frozenset(), Action.DELAYED, False),
    (frozenset(), Action.DELIVERED, False),
    (frozenset({F}), Action.FAILED, True),
    (frozenset({F}), Action.DELAYED, False),
    (frozenset({D}), Action.DELAYED, True),
    (frozenset({D}), Action.FAILED, False),
    (frozenset({S}), Action.DELIVERED, True),
    (frozenset({S}), Action.RELAYED, True),
    (frozenset({S}), Action.EXPANDED, True),
    (frozenset({S}), Action.FAILED, False),
    (frozenset({S, F}), Action.FAILED, True),
])
def test_notify_selects(notify: frozenset[NotifyOn] | None, action: Action,
                        wanted: bool) -> None:
    status = {Action.FAILED: "5.0.0", Action.DELAYED: "4.0.0"}.get(action, "2.0.0")
    report = RecipientReport("bob@example.net", action, status, notify=notify)
    assert wants_report(report) is wanted
    result = build_dsn(original(), [report], reporting_mta=MTA, now=NOW)
    if wanted:
        assert isinstance(result, Dsn)
    else:
        assert result == NoDsn(NoDsnReason.NOT_REQUESTED)


def test_only_the_recipients_that_asked_are_reported() -> None:
    dsn = build(original(), failed("bob@example.net", notify=frozenset()),
                failed("dave@example.net", notify=frozenset({F})),
                failed("erin@example.net"))
    _, recipients = status_blocks(parse(dsn))
    assert [r["Final-Recipient"] for r in recipients] == [
        "rfc822; dave@example.net", "rfc822; erin@example.net"]
    assert [r.final_recipient for r in dsn.reported] == ["dave@example.net", "erin@example.net"]
    assert b"bob@example.net" not in dsn.message.split(b"message/delivery-status")[1].split(
        b"text/rfc822-headers")[0]


# -- never a bounce to <>, never a loop ----------------------------------------------------------

@pytest.mark.parametrize("sender", ["", "<>", " "])
def test_never_to_the_null_sender(sender: str) -> None:
    result = build_dsn(original(sender=sender), [failed()], reporting_mta=MTA, now=NOW)
    assert result == NoDsn(NoDsnReason.NULL_SENDER)


def test_never_about_a_delivery_report() -> None:
    first = build(original(ret=Ret.FULL), failed())
    assert is_delivery_report(first.message)
    assert is_automatic(first.message)
    # Our DSN travels from <>: its failure is never reported ...
    assert suppression_reason(first.envelope_sender, first.message) is NoDsnReason.NULL_SENDER
    # ... and were it to come back with a sender forged in, still no report about a report.
    again = build_dsn(original(content=first.message, sender="someone@example.org"),
                      [failed("alice@example.com")], reporting_mta=MTA, now=NOW)
    assert again == NoDsn(NoDsnReason.DELIVERY_REPORT)


def test_global_delivery_report_is_a_report_too() -> None:
    content = (b"From: x@y\r\nMIME-Version: 1.0\r\nContent-Type: Multipart/Report;\r\n"
               b" report-type=\"Global-Delivery-Status\"; boundary=b\r\n\r\n--b--\r\n")
    assert is_delivery_report(content)
    assert not is_delivery_report(b"Content-Type: multipart/report; report-type=disposition-"
                                  b"notification; boundary=b\r\n\r\n--b--\r\n")
    assert not is_delivery_report(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n")
    assert not is_delivery_report(ORIGINAL)


def test_never_to_our_own_daemon() -> None:
    result = build_dsn(original(sender=f"mailer-daemon@{MTA}"), [failed()],
                       reporting_mta=MTA, now=NOW)
    assert result == NoDsn(NoDsnReason.OWN_DAEMON)
    result = build_dsn(original(sender="bounces@example.com"), [failed()],
                       reporting_mta=MTA, now=NOW, from_address="Bounces@Example.com")
    assert result == NoDsn(NoDsnReason.OWN_DAEMON)


def test_auto_replied_message_with_a_sender_still_gets_its_bounce() -> None:
    # RFC 3834 stops responders answering automatic mail; a DSN to a real return address is
    # not an answer to the content, and the DSN itself (from <>) cannot loop.
    content = b"Auto-Submitted: auto-replied\r\n" + ORIGINAL
    assert is_automatic(content)
    assert isinstance(build_dsn(original(content=content), [failed()],
                                reporting_mta=MTA, now=NOW), Dsn)


@pytest.mark.parametrize(("header", "keyword", "automatic"), [
    (b"", None, False),
    (b"Auto-Submitted: no\r\n", "no", False),
    (b"Auto-Submitted: No (a person wrote this)\r\n", "no", False),
    (b"Auto-Submitted: auto-generated\r\n", "auto-generated", True),
    (b"auto-submitted: Auto-Replied; owner-email=x@y\r\n", "auto-replied", True),
    (b"Auto-Submitted: auto-notified\r\n", "auto-notified", True),
])
def test_auto_submitted(header: bytes, keyword: str | None, automatic: bool) -> None:
    content = header + ORIGINAL
    assert auto_submitted(content) == keyword
    assert is_automatic(content) is automatic


# -- the size cap ---------------------------------------------------------------------------------

def _sized(total: int) -> bytes:
    header, _ = split_message(ORIGINAL)
    body_len = total - len(header) - 2
    line = b"x" * 70 + b"\r\n"
    body = (line * (body_len // len(line) + 1))[:body_len - 2] + b"\r\n"
    content = header + b"\r\n" + body
    assert len(content) == total
    return content


def test_ret_full_at_the_limit_and_one_past() -> None:
    limit = 4096
    at = build(original(content=_sized(limit), ret=Ret.FULL), failed(), return_limit=limit)
    assert parts(parse(at))[2].get_content_type() == "message/rfc822"
    past = build(original(content=_sized(limit + 1), ret=Ret.FULL), failed(),
                 return_limit=limit)
    msg = parse(past)
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    assert f"({limit + 1} bytes)" in human(msg)
    assert "only its headers are attached" in human(msg)


def test_default_limit_applies() -> None:
    big = build(original(content=_sized(RETURN_CONTENT_LIMIT + 1), ret=Ret.FULL), failed())
    assert parts(parse(big))[2].get_content_type() == "text/rfc822-headers"
    assert len(big.message) < RETURN_CONTENT_LIMIT


def test_huge_header_section_is_cut_at_a_line_end() -> None:
    header = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"y" * 60) for i in range(200))
    content = header + ORIGINAL
    dsn = build(original(content=content), failed(), return_limit=2000)
    returned = parts(parse(dsn))[2].get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert 0 < len(returned) <= 2000 + 2
    assert returned.endswith(b"\r\n") and content.startswith(returned)
    assert "headers are attached" in human(parse(dsn))


# -- internationalised addresses (RFC 6533) degrade gracefully ------------------------------------

def test_utf8_addresses() -> None:
    sender = "jos\u00e9@example.com"
    rcpt = "\u7528\u6237@example.net"
    content = ("From: jos\u00e9@example.com\r\nTo: \u7528\u6237@example.net\r\n"
               "Subject: caf\u00e9\r\n\r\nbody\r\n").encode()
    report = failed(rcpt, original_recipient=OriginalRecipient("utf-8", rcpt),
                    diagnostic=f"550 5.1.1 <{rcpt}> unknown")
    dsn = build(original(content=content, sender=sender), report)
    assert dsn.envelope_recipient == sender
    assert dsn.needs_smtputf8
    assert_well_formed(dsn.message)
    msg = parse(dsn)
    assert msg["To"].addresses[0].addr_spec == sender
    _, (r,) = status_blocks(msg)
    for name in ("Original-Recipient", "Final-Recipient"):
        addr_type, _, value = r[name].partition(";")
        assert addr_type == "utf-8"
        assert value.strip().isascii()
        assert utf8_addr_decode(value.strip()) == rcpt
    assert r["Diagnostic-Code"].isascii()
    # The human-readable part says it in UTF-8.
    assert f"<{rcpt}>" in human(msg) and sender in human(msg)
    # The status part stays 7-bit: only the returned headers (and To) carry UTF-8.
    status_raw = dsn.message.split(b"message/delivery-status")[1].split(b"--=_dsn_")[0]
    assert status_raw.isascii()


def test_eight_bit_original_needs_8bitmime() -> None:
    content = ORIGINAL.replace(b"the figures.", b"die Zahlen \xc3\xa4.")
    dsn = build(original(content=content, ret=Ret.FULL), failed())
    assert dsn.needs_8bitmime and not dsn.needs_smtputf8
    returned = parts(parse(dsn))[2]
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert b"die Zahlen \xc3\xa4." in dsn.message


# -- what comes from outside cannot inject fields ------------------------------------------------

def test_remote_text_cannot_add_fields() -> None:
    evil = failed(remote_mta="mx.example.net\r\nAction: delivered",
                  diagnostic="550 no\r\nStatus: 2.0.0\r\n\r\nFinal-Recipient: rfc822; x@y")
    dsn = build(original(), evil)
    assert_well_formed(dsn.message)
    _, recipients = status_blocks(parse(dsn))
    assert len(recipients) == 1
    (r,) = recipients
    assert r.get_all("Action") == ["failed"]
    assert r.get_all("Status") == ["5.1.1"]
    assert r.get_all("Final-Recipient") == ["rfc822; bob@example.net"]


def test_long_diagnostic_is_cut_and_folded() -> None:
    dsn = build(original(), failed(diagnostic="550 5.7.1 " + "word " * 1000))
    assert_well_formed(dsn.message)
    _, (r,) = status_blocks(parse(dsn))
    value = " ".join(r["Diagnostic-Code"].split())
    assert value.startswith("smtp; 550 5.7.1 word")
    assert value.endswith("...")
    assert len(value) <= len("smtp; ") + MAX_DIAGNOSTIC


def test_status_must_match_action() -> None:
    with pytest.raises(ValueError):
        RecipientReport("a@b", Action.FAILED, "4.0.0")
    with pytest.raises(ValueError):
        RecipientReport("a@b", Action.DELAYED, "5.0.0")
    with pytest.raises(ValueError):
        RecipientReport("a@b", Action.DELIVERED, "2.0")
    with pytest.raises(ValueError):
        RecipientReport("a@b", Action.FAILED, "5.1.1000")


# -- delay notice timing --------------------------------------------------------------------------

def test_delay_notice_due() -> None:
    assert dt.timedelta(hours=4) == DEFAULT_DELAY_WARNING
    start = NOW - DEFAULT_DELAY_WARNING
    assert delay_notice_due(start, NOW, already_sent=False)
    assert not delay_notice_due(start + dt.timedelta(seconds=1), NOW, already_sent=False)
    assert not delay_notice_due(start, NOW, already_sent=True)
    assert delay_notice_due(NOW - dt.timedelta(minutes=30), NOW, already_sent=False,
                            after=dt.timedelta(minutes=30))


# -- properties -----------------------------------------------------------------------------------

_BODY_LINES = st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                               max_size=120), max_size=30)


@settings(max_examples=60, deadline=None)
@given(_BODY_LINES, st.sampled_from([Ret.FULL, Ret.HDRS, None]),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_any_body_round_trips(lines: list[str], ret: Ret | None, diagnostic: str) -> None:
    content = ORIGINAL + "".join(line + "\r\n" for line in lines).encode()
    dsn = build(original(content=content, ret=ret), failed(diagnostic=diagnostic or None))
    assert_well_formed(dsn.message)
    msg = parse(dsn)
    assert len(parts(msg)) == 3
    _, recipients = status_blocks(msg)
    assert len(recipients) == 1 and recipients[0]["Action"] == "failed"
    if ret is Ret.FULL:
        assert b"\r\n\r\n" + content + b"\r\n--=_dsn_" in dsn.message
