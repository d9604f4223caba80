"""proto/imap/envelope.py: ENVELOPE (RFC 3501 §7.4.2), strings raw, addresses structured."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.proto.imap.envelope import (
    MISSING_DOMAIN,
    Address,
    envelope,
    nstring,
    parse_address_list,
)
from mailkeep.proto.imap.mime import parse_message

MESSAGES = Path(__file__).parent / "messages"
NIL = None


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


def test_full_envelope() -> None:
    assert envelope(parse_message(load("mixed_attachments.eml"))) == [
        "Wed, 4 Mar 2026 08:00:00 +0000",
        "Monthly report",
        [["Reports, Daily", NIL, "reports", "example.com"]],
        [[NIL, NIL, "robot", "example.com"]],
        [["Help Desk", NIL, "help", "example.com"]],
        [[NIL, NIL, "a", "example.net"], [NIL, NIL, "b", "example.net"]],
        [["Carol", NIL, "carol", "example.net"]],
        NIL,
        "<req-9@example.net>",
        "<mixed-1@example.com>",
    ]


def test_sender_and_reply_to_default_to_from() -> None:
    env = envelope(parse_message(load("alternative.eml")))
    assert isinstance(env, list)
    alice = [["Alice Example", NIL, "alice", "example.org"]]
    assert env[2] == env[3] == env[4] == alice
    assert env[5] == [["Bob", NIL, "bob", "example.net"]]
    assert env[6] is env[7] is env[8] is None


def test_encoded_words_groups_routes_and_comments_kept_raw() -> None:
    env = envelope(parse_message(load("encoded_words.eml")))
    assert isinstance(env, list)
    # RFC 3501 §7.4.2: the server does not decode RFC 2047 encoded words
    assert env[1] == "=?utf-8?B?R3LDvMOfZQ==?= =?utf-8?q?_aus_M=C3=BCnchen?="
    assert env[2] == [["=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=", NIL, "joerg", "example.de"]]
    # group syntax: (NIL NIL "name" NIL) members (NIL NIL NIL NIL)
    assert env[5] == [
        ["=?ISO-8859-1?Q?Andr=E9?= Pirard", NIL, "PIRARD", "vm1.ulg.ac.be"],
        [NIL, NIL, "Friends", NIL],
        [NIL, NIL, "anna", "example.de"],
        ["Ben B.", NIL, "ben", "example.de"],
        [NIL, NIL, NIL, NIL],
        [NIL, NIL, "Undisclosed recipients", NIL],
        [NIL, NIL, NIL, NIL],
    ]
    assert env[6] == [["Karl Klammer", NIL, "karl", "example.de"],
                      [NIL, "@relay.example,@gw.example", "route", "example.de"]]


def test_eight_bit_header_values_are_bytes() -> None:
    env = envelope(parse_message(load("eight_bit_headers.eml")))
    assert isinstance(env, list)
    assert env[1] == b"Gr\xc3\xbc\xc3\x9fe"
    assert env[2] == [[b"=?utf-8?q?x?= J\xc3\xb6rg", NIL, "j", "example.de"]]


def test_empty_message_is_all_nil() -> None:
    assert envelope(parse_message(b"")) == [NIL] * 10


def test_folded_subject_is_unfolded_and_empty_subject_is_empty_string() -> None:
    env = envelope(parse_message(b"Subject: a\r\n  long\r\n\tone\r\nDate:\r\n\r\n"))
    assert isinstance(env, list)
    assert env[0] == ""
    assert env[1] == "a  long\tone"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
         [Address("Mary Smith", None, "mary", "x.test"),
          Address(None, None, "jdoe", "example.org"),
          Address("Who?", None, "one", "y.test")]),
        ('"Joe Q. Public" <john.q.public@example.com>',
         [Address("Joe Q. Public", None, "john.q.public", "example.com")]),
        ("John Q. Public <john@x>", [Address("John Q. Public", None, "john", "x")]),
        ('"john doe"@example.com', [Address(None, None, '"john doe"', "example.com")]),
        ("<joe@[192.0.2.1]>", [Address(None, None, "joe", "[192.0.2.1]")]),
        ("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
         [Address(None, None, "A Group", None), Address("Ed Jones", None, "c", "a.test"),
          Address(None, None, "joe", "where.test"), Address("John", None, "jdoe", "one.test"),
          Address(None, None, None, None)]),
        ("undisclosed-recipients:;",
         [Address(None, None, "undisclosed-recipients", None), Address(None, None, None, None)]),
        ("open group: a@b", [Address(None, None, "open group", None),
                             Address(None, None, "a", "b"), Address(None, None, None, None)]),
        ("nobody", [Address(None, None, "nobody", MISSING_DOMAIN)]),
        (", ,(just a comment),", []),
        ("", []),
        # an unterminated quoted string runs to the end: one odd local part, no crash
        ('"unterminated <a@b>', [Address(None, None, '"unterminated <a@b>"', MISSING_DOMAIN)]),
        ("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
         [Address("Pete", None, "pete", "silly.test")]),
    ],
)
def test_address_lists(text: str, expected: list[Address]) -> None:
    assert parse_address_list(text) == expected


def test_nstring() -> None:
    assert nstring(None) is None
    assert nstring("plain") == "plain"
    assert nstring("caf\udcc3\udca9") == b"caf\xc3\xa9"
    assert nstring("a\r\nb\0") == "ab"
