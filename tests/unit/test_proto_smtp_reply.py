"""proto/smtp_reply.py: enhanced status codes (RFC 2034, RFC 3463) on every reply."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailkeep.proto.smtp_reply import REWRITES, enhance, reply_code

ENHANCED = re.compile(r"^(\d{3})([ -])([245])\.(\d{1,3})\.(\d{1,3})( |$)")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("235 Authentication successful", "235 2.7.0 Authentication successful"),
        ("251 User not local", "251 2.1.5 User not local"),
        ("252 Cannot VRFY user", "252 2.5.0 Cannot VRFY user"),
        ("421 Service not available", "421 4.3.0 Service not available"),
        ("451 Local error", "451 4.3.0 Local error"),
        ("452 Too many recipients", "452 4.5.3 Too many recipients"),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("502 Command not implemented", "502 5.5.1 Command not implemented"),
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("504 Unrecognized authentication type", "504 5.5.4 Unrecognized authentication type"),
        ("530 Authentication required", "530 5.7.0 Authentication required"),
        ("535 Bad credentials", "535 5.7.8 Bad credentials"),
        ("538 Encryption required", "538 5.7.11 Encryption required"),
        ("552 Too big", "552 5.3.4 Too big"),
        ("553 Bad address", "553 5.1.3 Bad address"),
        ("554 Transaction failed", "554 5.0.0 Transaction failed"),
        ("555 Unknown parameter", "555 5.5.4 Unknown parameter"),
        # not in the table: the class default X.0.0
        ("299 odd", "299 2.0.0 odd"),
        ("499 odd", "499 4.0.0 odd"),
        ("599 odd", "599 5.0.0 odd"),
    ],
)
def test_enhance_adds_rfc3463_codes(reply: str, expected: str) -> None:
    assert enhance(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # aiosmtpd's unrecognised command: X.5.1 invalid command, not the 500 default X.5.2
        ('500 Error: command "FOO" not recognized',
         '500 5.5.1 Error: command "FOO" not recognized'),
        ("500 Command line too long", "500 5.5.2 Command line too long"),
        ("552 Error: Too much mail data for you", "552 5.3.4 Error: Too much mail data for you"),
    ],
)
def test_text_overrides(reply: str, expected: str) -> None:
    assert enhance(reply) == expected


@pytest.mark.parametrize(
    "reply",
    ["250 2.1.0 Sender OK", "550 5.7.1 relay not configured", "452 4.5.3 Too many recipients",
     "250-2.0.0 first line", "538 5.7.11 Encryption required", "250 2.0.0"],
)
def test_replies_with_a_code_are_left_alone(reply: str) -> None:
    assert enhance(reply) == reply


@pytest.mark.parametrize(
    "reply",
    ["220 mail.example.test ESMTP mailkeep", "334 ", "334 VXNlcm5hbWU6",
     "354 End data with <CR><LF>.<CR><LF>", "220-multi", "110 restart", "", "OK", "25",
     "abc def"],
)
def test_greeting_continuations_and_non_replies_are_left_alone(reply: str) -> None:
    assert enhance(reply) == reply


def test_multi_line_separator_preserved() -> None:
    assert enhance("250-first line") == "250-2.0.0 first line"
    assert enhance("250 last line") == "250 2.0.0 last line"
    assert enhance("550-5.7.1 already") == "550-5.7.1 already"


def test_bare_code_gets_a_code() -> None:
    assert enhance("250") == "250 2.0.0"


@pytest.mark.parametrize(("original", "rewritten"), sorted(REWRITES.items()))
def test_rewrites_table(original: str, rewritten: str) -> None:
    assert enhance(original) == rewritten
    assert ENHANCED.match(rewritten), rewritten
    assert rewritten[:3] == original[:3]  # a rewrite never changes the basic code


def test_rewrite_for_long_line_uses_5_5_6_and_names_the_limit() -> None:
    out = enhance("500 Line too long (see RFC5321 4.5.3.1.6)")
    assert out.startswith("500 5.5.6 ")
    assert "1000" in out


@pytest.mark.parametrize(("reply", "code"), [("250 OK", 250), ("xyz", 0), ("", 0), ("55", 55)])
def test_reply_code(reply: str, code: int) -> None:
    assert reply_code(reply) == code


# -- properties --------------------------------------------------------------------------------

_reply_like = st.one_of(
    st.builds(lambda code, sep, text: f"{code}{sep}{text}",
              st.integers(100, 599).map(str), st.sampled_from([" ", "-"]), st.text(max_size=40)),
    st.integers(100, 599).map(str),
)


def _well_formed(reply: str) -> bool:
    """What aiosmtpd can produce: no basic code, or a code then end, space or hyphen."""
    return not reply[:3].isdigit() or reply[3:4] in ("", " ", "-")


@settings(max_examples=600)
@given(st.one_of(_reply_like, st.text(max_size=60).filter(_well_formed),
                 st.sampled_from(sorted(REWRITES))))
def test_enhance_total_and_idempotent_on_well_formed_replies(reply: str) -> None:
    once = enhance(reply)
    assert isinstance(once, str)
    assert enhance(once) == once
    if once != reply and reply not in REWRITES:
        # whenever it changes a reply, the basic code and separator survive and a code is added
        m = ENHANCED.match(once)
        assert m is not None, once
        assert once[:4] == (reply[:4] if len(reply) > 3 else reply[:3] + " ")


@settings(max_examples=300)
@example("250OK")
@given(st.text(max_size=60))
def test_enhance_idempotent_on_any_text(reply: str) -> None:
    once = enhance(reply)
    assert enhance(once) == once
