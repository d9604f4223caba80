"""proto/dsn.py: RFC 3461 DSN parameters (RET, ENVID, NOTIFY, ORCPT) and xtext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.dsn import (
    DEFAULT_NOTIFY,
    MAX_ENVID_PARAMETER,
    MAX_ORCPT_PARAMETER,
    DsnParameterError,
    MailDsnParams,
    NotifyOn,
    OriginalRecipient,
    RcptDsnParams,
    Ret,
    effective_notify,
    orcpt_for,
    parse_mail_params,
    parse_rcpt_params,
    render_mail_params,
    render_orcpt,
    render_rcpt_params,
    utf8_addr_decode,
    utf8_addr_xtext_encode,
    xtext_decode,
    xtext_encode,
)


def reply_of(exc: pytest.ExceptionInfo[DsnParameterError]) -> str:
    return exc.value.reply


# -- xtext (RFC 3461 §4) -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "text"), [
    (b"", ""),
    (b"abc", "abc"),
    (b"a+b", "a+2Bb"),          # "+" is never an xchar
    (b"a=b", "a+3Db"),          # nor is "="
    (b"a b", "a+20b"),          # SP is outside "!".."~"
    (b"\x00\x7f\xff", "+00+7F+FF"),
    (b"!~", "!~"),              # the ends of the xchar range
    (b"<joe@example.com>", "<joe@example.com>"),
])
def test_xtext_examples(raw: bytes, text: str) -> None:
    assert xtext_encode(raw) == text
    assert xtext_decode(text) == raw


def test_xtext_encoder_writes_upper_case_hex() -> None:
    assert xtext_encode(b"\xab") == "+AB"


def test_xtext_decoder_accepts_lower_case_hex() -> None:
    # DEVIATION documented in the module: liberal in what we accept.
    assert xtext_decode("+2b") == b"+"


@pytest.mark.parametrize("bad", [
    "a+", "a+2", "a+G0", "+2", "a=b", "a b", "caf\u00e9", "a\tb", "\x7f",
])
def test_xtext_decoder_refuses_what_the_grammar_excludes(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


@given(st.binary(max_size=200))
def test_xtext_round_trip(raw: bytes) -> None:
    encoded = xtext_encode(raw)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    assert xtext_decode(encoded) == raw


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100))
def test_xtext_decode_then_encode_is_canonical(text: str) -> None:
    try:
        raw = xtext_decode(text)
    except ValueError:
        return
    # Canonical form: xchars as themselves, hexchars upper-case; decoding it again agrees.
    assert xtext_decode(xtext_encode(raw)) == raw


# -- utf-8-addr-xtext (RFC 6533 §3) ---------------------------------------------------------------

def test_utf8_addr_xtext_examples() -> None:
    assert utf8_addr_xtext_encode("jos\u00e9@example.com") == "jos\\x{E9}@example.com"
    assert utf8_addr_xtext_encode("a+b=c\\d e") == "a\\x{2B}b\\x{3D}c\\x{5C}d\\x{20}e"
    assert utf8_addr_xtext_encode("\u7528\u6237@\u4f8b\u5b50.\u4e2d\u56fd") == (
        "\\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{4E2D}\\x{56FD}")
    assert utf8_addr_xtext_encode("\U0001f600@x") == "\\x{1F600}@x"
    assert utf8_addr_decode("jos\\x{E9}@example.com") == "jos\u00e9@example.com"
    assert utf8_addr_decode("jos\\x{e9}@example.com") == "jos\u00e9@example.com"
    # utf-8-addr-unitext: UTF-8 as itself (under SMTPUTF8)
    assert utf8_addr_decode("jos\u00e9@example.com") == "jos\u00e9@example.com"


@pytest.mark.parametrize("bad", [
    "",
    "a b",               # SP must be escaped
    "a+b",               # so must "+"
    "a\\b",              # and "\" unless it starts \x{..}
    "\\x{41}@x",         # "A" is a QCHAR: escaping it is not allowed
    "\\x{D800}@x",       # a surrogate is not a scalar value
    "\\x{110000}@x",     # beyond Unicode
    "\\x{00E9}@x",       # leading zeros beyond two digits
    "\\x{9}@x",          # one digit is too few
    "\\x{00}@x",         # NUL
])
def test_utf8_addr_decode_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        utf8_addr_decode(bad)


_ADDRESS_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@given(st.text(alphabet=_ADDRESS_CHARS, min_size=1, max_size=60))
def test_utf8_addr_xtext_round_trip(address: str) -> None:
    encoded = utf8_addr_xtext_encode(address)
    assert encoded.isascii() and "+" not in encoded and "=" not in encoded
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    assert utf8_addr_decode(encoded) == address


# -- MAIL: RET and ENVID --------------------------------------------------------------------------

def test_mail_without_dsn_parameters() -> None:
    assert parse_mail_params([]) == MailDsnParams(None, None)
    assert parse_mail_params(["SIZE=1000", "BODY=8BITMIME", "SMTPUTF8"]) == MailDsnParams()


@pytest.mark.parametrize(("option", "ret"), [
    ("RET=FULL", Ret.FULL), ("RET=HDRS", Ret.HDRS), ("ret=hdrs", Ret.HDRS), ("Ret=Full", Ret.FULL),
])
def test_ret(option: str, ret: Ret) -> None:
    assert parse_mail_params(["SIZE=10", option]).ret is ret


@pytest.mark.parametrize("option", ["RET", "RET=", "RET=ALL", "RET=FULL,HDRS", "RET=HDR"])
def test_bad_ret(option: str) -> None:
    with pytest.raises(DsnParameterError) as exc:
        parse_mail_params([option])
    assert reply_of(exc).startswith("501 5.5.4 ")


def test_envid_is_decoded() -> None:
    assert parse_mail_params(["ENVID=QQ314159"]).envid == "QQ314159"
    assert parse_mail_params(["ENVID=a+2Bb+20c"]).envid == "a+b c"
    assert parse_mail_params(["envid=x"]).envid == "x"


@pytest.mark.parametrize("option", [
    "ENVID", "ENVID=", "ENVID=a=b", "ENVID=a+", "ENVID=+0D+0A", "ENVID=+FF", "ENVID=+00",
])
def test_bad_envid(option: str) -> None:
    with pytest.raises(DsnParameterError) as exc:
        parse_mail_params([option])
    assert reply_of(exc).startswith("501 5.5.4 ")


def test_envid_length_at_the_limit_and_one_past() -> None:
    at_limit = "ENVID=" + "x" * (MAX_ENVID_PARAMETER - len("ENVID="))
    assert len(at_limit) == MAX_ENVID_PARAMETER
    assert parse_mail_params([at_limit]).envid == "x" * (MAX_ENVID_PARAMETER - 6)
    with pytest.raises(DsnParameterError) as exc:
        parse_mail_params([at_limit + "x"])
    assert "too long" in reply_of(exc)


@pytest.mark.parametrize("options", [
    ["RET=FULL", "RET=HDRS"], ["RET=FULL", "RET=FULL"], ["ENVID=a", "envid=b"],
])
def test_repeated_mail_parameter(options: list[str]) -> None:
    with pytest.raises(DsnParameterError) as exc:
        parse_mail_params(options)
    assert "more than once" in reply_of(exc)


def test_mail_render_round_trip() -> None:
    params = parse_mail_params(["RET=HDRS", "ENVID=a+2Bb+20c"])
    assert render_mail_params(params) == ["RET=HDRS", "ENVID=a+2Bb+20c"]
    assert parse_mail_params(render_mail_params(params)) == params
    # RFC 3461 §5.2.1: what the client did not send is not invented for the next hop.
    assert render_mail_params(MailDsnParams()) == []


# -- RCPT: NOTIFY and ORCPT -----------------------------------------------------------------------

def test_rcpt_without_dsn_parameters() -> None:
    params = parse_rcpt_params([])
    assert params == RcptDsnParams(None, None)
    assert effective_notify(params.notify) == DEFAULT_NOTIFY
    assert {NotifyOn.FAILURE, NotifyOn.DELAY} == DEFAULT_NOTIFY


@pytest.mark.parametrize(("value", "expected"), [
    ("NEVER", set()),
    ("never", set()),
    ("SUCCESS", {NotifyOn.SUCCESS}),
    ("FAILURE", {NotifyOn.FAILURE}),
    ("DELAY", {NotifyOn.DELAY}),
    ("SUCCESS,FAILURE", {NotifyOn.SUCCESS, NotifyOn.FAILURE}),
    ("FAILURE,DELAY", {NotifyOn.FAILURE, NotifyOn.DELAY}),
    ("DELAY,SUCCESS,FAILURE", {NotifyOn.SUCCESS, NotifyOn.FAILURE, NotifyOn.DELAY}),
])
def test_notify(value: str, expected: set[NotifyOn]) -> None:
    notify = parse_rcpt_params([f"NOTIFY={value}"]).notify
    assert notify == expected
    assert effective_notify(notify) == expected  # an explicit NEVER stays NEVER


@pytest.mark.parametrize("value", [
    "", "NEVER,FAILURE", "FAILURE,NEVER", "ALWAYS", "FAILURE,,DELAY", "FAILURE,", " FAILURE",
    "FAILURE,FAILURE",
])
def test_bad_notify(value: str) -> None:
    with pytest.raises(DsnParameterError) as exc:
        parse_rcpt_params([f"NOTIFY={value}"])
    assert reply_of(exc).startswith("501 5.5.4 ")


def test_orcpt_rfc822() -> None:
    orcpt = parse_rcpt_params(["ORCPT=rfc822;Bob+40Example.COM"]).orcpt
    assert orcpt == OriginalRecipient("rfc822", "Bob@Example.COM")
    assert parse_rcpt_params(["ORCPT=RFC822;a+2Bb@x"]).orcpt == OriginalRecipient("rfc822", "a+b@x")


def test_orcpt_utf8() -> None:
    orcpt = parse_rcpt_params(["ORCPT=utf-8;jos\\x{E9}@example.com"]).orcpt
    assert orcpt == OriginalRecipient("utf-8", "jos\u00e9@example.com")
    # utf-8-addr-unitext, as a client under SMTPUTF8 may send it
    orcpt = parse_rcpt_params(["ORCPT=UTF-8;jos\u00e9@example.com"]).orcpt
    assert orcpt == OriginalRecipient("utf-8", "jos\u00e9@example.com")


def test_orcpt_other_address_type_is_kept() -> None:
    orcpt = parse_rcpt_params(["ORCPT=x400;/C+3Dus/ADMD+3D+20/"]).orcpt
    assert orcpt == OriginalRecipient("x400", "/C=us/ADMD= /")


@pytest.mark.parametrize("value", [
    "", "rfc822", "rfc822;", ";a@b", "rfc 822;a@b", "rfc822;a b", "rfc822;a=b",
    "rfc822;a+0Db", "rfc822;caf+C3+A9@x", "utf-8;a b@x", "utf-8;\\x{41}@x",
])
def test_bad_orcpt(value: str) -> None:
    with pytest.raises(DsnParameterError) as exc:
        parse_rcpt_params([f"ORCPT={value}"])
    assert reply_of(exc).startswith("501 5.5.4 ")


def test_orcpt_length_at_the_limit_and_one_past() -> None:
    prefix = "ORCPT=rfc822;"
    local = "a" * (MAX_ORCPT_PARAMETER - len(prefix) - len("@x"))
    at_limit = f"{prefix}{local}@x"
    assert len(at_limit) == MAX_ORCPT_PARAMETER
    assert parse_rcpt_params([at_limit]).orcpt == OriginalRecipient("rfc822", f"{local}@x")
    with pytest.raises(DsnParameterError) as exc:
        parse_rcpt_params([f"{prefix}a{local}@x"])
    assert "too long" in reply_of(exc)


def test_repeated_rcpt_parameter() -> None:
    with pytest.raises(DsnParameterError):
        parse_rcpt_params(["NOTIFY=NEVER", "NOTIFY=FAILURE"])
    with pytest.raises(DsnParameterError):
        parse_rcpt_params(["ORCPT=rfc822;a@b", "ORCPT=rfc822;a@b"])


def test_rcpt_render_round_trip() -> None:
    params = parse_rcpt_params(["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;a+2Bb@x"])
    assert render_rcpt_params(params) == ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;a+2Bb@x"]
    assert parse_rcpt_params(render_rcpt_params(params)) == params
    never = RcptDsnParams(notify=frozenset())
    assert render_rcpt_params(never) == ["NOTIFY=NEVER"]
    assert parse_rcpt_params(render_rcpt_params(never)) == never
    assert render_rcpt_params(RcptDsnParams()) == []


def test_orcpt_for_and_render() -> None:
    assert orcpt_for("a@b.example") == OriginalRecipient("rfc822", "a@b.example")
    assert render_orcpt(orcpt_for("a+x@b.example")) == "ORCPT=rfc822;a+2Bx@b.example"
    utf8 = orcpt_for("jos\u00e9@b.example")
    assert utf8 == OriginalRecipient("utf-8", "jos\u00e9@b.example")
    assert render_orcpt(utf8) == "ORCPT=utf-8;jos\\x{E9}@b.example"
    assert parse_rcpt_params([render_orcpt(utf8)]).orcpt == utf8


_NOTIFY_SETS = st.one_of(
    st.none(), st.just(frozenset()),
    st.sets(st.sampled_from(list(NotifyOn)), min_size=1).map(frozenset))
_ASCII_ADDR = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                      min_size=1, max_size=80)


@given(_NOTIFY_SETS, st.one_of(st.none(), _ASCII_ADDR.map(lambda a: orcpt_for(a)),
                               st.text(alphabet=_ADDRESS_CHARS, min_size=1, max_size=40)
                               .map(lambda a: OriginalRecipient("utf-8", a))))
def test_rcpt_params_round_trip(notify: frozenset[NotifyOn] | None,
                                orcpt: OriginalRecipient | None) -> None:
    params = RcptDsnParams(notify=notify, orcpt=orcpt)
    assert parse_rcpt_params(render_rcpt_params(params)) == params


@given(st.lists(st.text(max_size=30), max_size=6))
def test_any_parameter_list_parses_or_raises_the_typed_error(options: list[str]) -> None:
    for parse in (parse_mail_params, parse_rcpt_params):
        try:
            parse(options)
        except DsnParameterError as e:
            assert e.reply.startswith("501 5.5.4 ")
