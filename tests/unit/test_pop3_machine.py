"""The POP3 machine beyond the transcripts: limits, injection, end of input, totality."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.config.model import DEFAULT_POP3_MAX_ERRORS, DEFAULT_POP3_MAX_LINE_LENGTH
from mailkeep.proto.pop3 import (
    MAX_BAD_COMMANDS,
    MAX_LINE_OCTETS,
    NEED_DATA,
    PAUSED,
    AuthRequest,
    Close,
    Pop3Machine,
    Reply,
    StartTls,
    State,
)
from mailkeep.proto.pop3.machine import COMMANDS_BY_STATE, multiline
from mailkeep.proto.sasl import encode_plain
from tests.support.pop3_driver import new_driver, run_chunks

LOGIN = b"USER alice\r\nPASS alice-pw\r\n"


def replies(d_out: bytearray) -> list[str]:
    return d_out.decode().split("\r\n")[:-1]


def test_config_defaults_match_protocol_constants() -> None:
    assert DEFAULT_POP3_MAX_LINE_LENGTH == MAX_LINE_OCTETS
    assert DEFAULT_POP3_MAX_ERRORS == MAX_BAD_COMMANDS


def test_apop_is_never_offered() -> None:
    d = new_driver()
    assert b"<" not in d.out  # RFC 1939 §7: no APOP timestamp in the greeting
    assert all("APOP" not in cmds for cmds in COMMANDS_BY_STATE.values())


# -- line length: at the limit and one past (habit 4) --------------------------------------

@pytest.mark.parametrize("limit", [255, 2048])
def test_line_at_limit_is_accepted(limit: int) -> None:
    line = b"USER " + b"a" * (limit - len(b"USER \r\n")) + b"\r\n"
    assert len(line) == limit
    d = new_driver(max_line=limit)
    d.feed(line)
    assert replies(d.out)[-1] == "+OK Send your password."


@pytest.mark.parametrize("limit", [255, 2048])
@pytest.mark.parametrize("split", [False, True])
def test_line_one_past_limit_is_drained_then_refused(limit: int, split: bool) -> None:
    line = b"USER " + b"a" * (limit + 1 - len(b"USER \r\n")) + b"\r\n"
    assert len(line) == limit + 1
    d = new_driver(max_line=limit)
    chunks = [line[i:i + 100] for i in range(0, len(line), 100)] if split else [line]
    for c in chunks:
        d.feed(c)
    d.feed(b"CAPA\r\n")  # still in sync: the next command is answered normally
    out = replies(d.out)
    assert out[1] == f"-ERR Line too long (at most {limit} octets)."
    assert out[2] == "+OK Capability list follows"


def test_huge_line_without_newline_is_not_buffered() -> None:
    d = new_driver()
    for _ in range(1000):
        d.feed(b"x" * 10_000)
    assert d.machine.pending_input < MAX_LINE_OCTETS
    d.feed(b"\r\nNOOP\r\n")
    assert replies(d.out)[1].startswith("-ERR Line too long")


def test_bad_command_budget_default() -> None:
    d = new_driver()
    for _ in range(MAX_BAD_COMMANDS - 1):
        d.feed(b"BOGUS\r\n")
    assert d.closed is None
    d.feed(b"BOGUS\r\n")
    assert d.closed == "too many bad commands"
    assert replies(d.out)[-1] == "-ERR Too many bad commands, closing."


# -- garbage -------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", [b"\xff\xfe\r\n", b"US\x00ER alice\r\n", b"NOOP\rX\r\n",
                                  b"\r\n", b" \r\n", b"\x16\x03\x01\x02\x00\x01\r\n"])
def test_garbage_gets_an_error(junk: bytes) -> None:
    d = new_driver()
    d.feed(junk)
    assert replies(d.out)[1].startswith("-ERR")
    assert d.closed is None


def test_bare_lf_commands_are_accepted() -> None:
    d = new_driver()
    d.feed(b"USER alice\nPASS alice-pw\nSTAT\n")
    assert replies(d.out)[-1] == "+OK 3 154"


def test_password_may_contain_spaces() -> None:
    m = Pop3Machine(tls_active=True, starttls_offered=False)
    m.receive_data(b"USER bob\r\nPASS  two words \r\n")
    assert isinstance(m.next_event(), Reply)
    ev = m.next_event()
    assert isinstance(ev, AuthRequest)
    assert ev.credentials.password == " two words "
    assert "two words" not in repr(ev)  # habit 8


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from(
    [b"USER alice\r\n", b"PASS alice-pw\r\n", b"RETR 1\r\n", b"TOP 2 1\r\n", b"DELE 1\r\n",
     b"LIST\r\n", b"UIDL 2\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"*\r\n", b"\r\n",
     b"QUIT\r\n", b"RSET\r\n", b"STLS\r\n", b"\n", b"\r", b"\x00"]), max_size=30),
       st.booleans(), st.booleans())
def test_totality(chunks: list[bytes], tls: bool, starttls: bool) -> None:
    """Any bytes give replies or a close, never an exception; every reply ends in CRLF."""
    d = run_chunks([c for c in chunks if c], tls=tls, starttls=starttls, max_line=255)
    assert d.out.endswith(b"\r\n")
    for line in replies(d.out):
        assert "\r" not in line and "\n" not in line


# -- STLS: nothing pipelined behind it is executed (RFC 2595 §4, habit 9) ------------------

def test_stls_injection_in_one_packet_is_refused() -> None:
    d = new_driver(tls=False, starttls=True)
    d.feed(b"STLS\r\nUSER alice\r\nPASS alice-pw\r\n")
    assert d.tls_upgrades == 0
    assert d.closed == "plaintext pipelined behind STLS"
    assert "+OK Logged in" not in d.out.decode()
    assert replies(d.out)[-1].startswith("-ERR")


def test_stls_then_end_of_input_is_refused() -> None:
    m = Pop3Machine(tls_active=False, starttls_offered=True)
    m.receive_data(b"STLS\r\n")
    m.receive_data(b"")
    assert isinstance(m.next_event(), Reply)
    assert isinstance(m.next_event(), Close)


def test_stls_pauses_until_the_driver_answers() -> None:
    m = Pop3Machine(tls_active=False, starttls_offered=True)
    m.receive_data(b"STLS\r\n")
    ev = m.next_event()
    assert isinstance(ev, StartTls)
    assert m.next_event() is PAUSED
    m.tls_started()
    assert m.next_event() is NEED_DATA
    assert "USER" in m.capabilities() and "STLS" not in m.capabilities()


def test_stls_handshake_failure_closes() -> None:
    m = Pop3Machine(tls_active=False, starttls_offered=True)
    m.receive_data(b"STLS\r\n")
    assert isinstance(m.next_event(), StartTls)
    m.tls_failed()
    assert isinstance(m.next_event(), Close)


def test_answer_without_request_is_a_driver_bug() -> None:
    m = Pop3Machine(tls_active=True, starttls_offered=False)
    with pytest.raises(RuntimeError):
        m.tls_started()


# -- end of input: no UPDATE state without QUIT (RFC 1939 §6) ------------------------------

def test_dele_then_drop_deletes_nothing() -> None:
    d = new_driver()
    d.feed(LOGIN + b"DELE 1\r\nDELE 2\r\n")
    d.feed(b"")
    assert d.closed == "connection closed by client"
    assert d.deleted == []


def test_pipelined_quit_before_end_of_input_is_honoured() -> None:
    d = new_driver()
    d.machine.receive_data(LOGIN + b"DELE 2\r\nQUIT\r\n")
    d.machine.receive_data(b"")
    d.pump()
    assert d.deleted == ["k2"]
    assert d.closed == "quit"
    assert d.machine.state is State.UPDATE


def test_requests_hold_back_pipelined_commands() -> None:
    m = Pop3Machine(tls_active=True, starttls_offered=False)
    m.receive_data(b"AUTH PLAIN " + encode_plain("alice", "alice-pw").encode() + b"\r\nSTAT\r\n")
    ev = m.next_event()
    assert isinstance(ev, AuthRequest) and ev.mechanism == "PLAIN"
    assert m.next_event() is PAUSED
    assert m.next_event() is PAUSED
    m.auth_succeeded([])
    assert m.next_event() == Reply(b"+OK Logged in, maildrop has 0 messages (0 octets).\r\n")
    assert m.next_event() == Reply(b"+OK 0 0\r\n")


def test_machine_ignores_input_after_close() -> None:
    d = new_driver()
    d.feed(b"QUIT\r\n")
    before = bytes(d.out)
    d.feed(b"CAPA\r\n")
    assert bytes(d.out) == before


def test_multiline_stuffs_dots() -> None:
    assert multiline("+OK", [".a", "b"]) == b"+OK\r\n..a\r\nb\r\n.\r\n"
