"""proto/sasl.py: SASL PLAIN (RFC 4616) and LOGIN message decoding."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.sasl import (
    MAX_FIELD_OCTETS,
    Credentials,
    SaslError,
    decode_base64,
    encode_plain,
    parse_login_field,
    parse_plain,
)

# -- RFC 4616 §4 examples -----------------------------------------------------------------------


def test_rfc4616_example_without_authzid() -> None:
    # RFC 4616 §4: "\0tim\0tanstaaftanstaaf"
    creds = parse_plain(b"\0tim\0tanstaaftanstaaf")
    assert creds == Credentials("", "tim", "tanstaaftanstaaf")


def test_rfc4616_example_with_authzid() -> None:
    # RFC 4616 §4: "Ursel\0Kurt\0xipj3plmq"
    creds = parse_plain(b"Ursel\0Kurt\0xipj3plmq")
    assert (creds.authzid, creds.login, creds.password) == ("Ursel", "Kurt", "xipj3plmq")


def test_rfc4616_example_over_base64() -> None:
    wire = base64.b64encode(b"\0tim\0tanstaaftanstaaf")
    assert wire == b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
    assert parse_plain(decode_base64(wire)).login == "tim"
    assert parse_plain(decode_base64(wire.decode())).password == "tanstaaftanstaaf"


def test_utf8_fields() -> None:
    creds = parse_plain("\0jöhn\0pässwörd€".encode())
    assert creds.login == "jöhn"
    assert creds.password == "pässwörd€"


# -- malformed messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    ["AHRpbQB0YW5zdGFhZnRhbnN0YWFm!", "not base64", "AHRpbQ", "====", "AHRp bQB0",
     "AHRpbQB0YW5zdGFhZnRhbnN0YWFm\n", "é"],
)
def test_bad_base64(data: str) -> None:
    with pytest.raises(SaslError, match="base64"):
        decode_base64(data)


def test_empty_base64_is_empty_bytes() -> None:
    assert decode_base64(b"") == b""


@pytest.mark.parametrize(
    "message",
    [b"", b"tim", b"\0tim", b"tim\0pw", b"\0\0tim\0pw", b"a\0b\0c\0d", b"\0tim\0pw\0"],
)
def test_wrong_number_of_nuls(message: bytes) -> None:
    with pytest.raises(SaslError, match="NUL"):
        parse_plain(message)


@pytest.mark.parametrize("message", [b"\0\0pw", b"\0tim\0", b"authz\0\0", b"\0\0"])
def test_empty_login_or_password(message: bytes) -> None:
    with pytest.raises(SaslError, match="empty"):
        parse_plain(message)


@pytest.mark.parametrize("field", [0, 1, 2])
def test_field_length_limit_at_and_one_past(field: int) -> None:
    at = [b"z", b"tim", b"pw"]
    at[field] = b"x" * MAX_FIELD_OCTETS
    creds = parse_plain(b"\0".join(at))
    assert [creds.authzid, creds.login, creds.password][field] == "x" * MAX_FIELD_OCTETS

    past = [b"z", b"tim", b"pw"]
    past[field] = b"x" * (MAX_FIELD_OCTETS + 1)
    with pytest.raises(SaslError, match="longer than 255"):
        parse_plain(b"\0".join(past))


def test_field_limit_counts_octets_not_characters() -> None:
    # "é" is two octets in UTF-8: 127 of them fit in 255 octets, 128 do not.
    assert parse_plain(b"\0tim\0" + ("é" * 127).encode()).password == "é" * 127
    with pytest.raises(SaslError, match="longer"):
        parse_plain(b"\0tim\0" + ("é" * 128).encode())


def test_limit_is_the_rfc_value() -> None:
    assert MAX_FIELD_OCTETS == 255  # RFC 4616 §2


@pytest.mark.parametrize(
    "message", [b"\0tim\0\xff\xfe", b"\0\xc3\0pw", b"\xed\xa0\x80\0tim\0pw", b"\0tim\0\xc0\xaf"]
)
def test_non_utf8_refused(message: bytes) -> None:
    with pytest.raises(SaslError, match="UTF-8"):
        parse_plain(message)


def test_login_field_limits() -> None:
    assert parse_login_field(b"x" * MAX_FIELD_OCTETS, "username") == "x" * MAX_FIELD_OCTETS
    with pytest.raises(SaslError, match="username"):
        parse_login_field(b"x" * (MAX_FIELD_OCTETS + 1), "username")
    with pytest.raises(SaslError, match="UTF-8"):
        parse_login_field(b"\xff", "password")


# -- secrets -----------------------------------------------------------------------------------


def test_repr_hides_the_password() -> None:
    creds = parse_plain(b"admin\0tim\0hunter2-secret")
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds])):
        assert "hunter2-secret" not in text
        assert "tim" in text
        assert "hidden" in text


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_parse_plain_is_total_on_any_bytes(data: bytes) -> None:
    try:
        result = parse_plain(data)
    except SaslError:
        return
    assert isinstance(result, Credentials)
    assert result.login and result.password
    assert data == b"\0".join(f.encode() for f in (result.authzid, result.login, result.password))


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=100), st.text(max_size=100)))
def test_decode_base64_is_total(data: bytes | str) -> None:
    try:
        out = decode_base64(data)
    except SaslError:
        return
    assert isinstance(out, bytes)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_parse_plain_of_decoded_base64_is_total(raw: bytes) -> None:
    wire = base64.b64encode(raw)
    assert decode_base64(wire) == raw
    with contextlib.suppress(SaslError):
        parse_plain(decode_base64(wire))


_field = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=60
)


@settings(max_examples=300)
@given(login=_field.filter(bool), password=_field.filter(bool), authzid=_field)
def test_encode_parse_round_trip(login: str, password: str, authzid: str) -> None:
    wire = encode_plain(login, password, authzid)
    assert wire.isascii()
    assert parse_plain(decode_base64(wire)) == Credentials(authzid, login, password)
