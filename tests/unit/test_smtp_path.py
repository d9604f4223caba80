"""proto/smtp_path.py: MAIL FROM / RCPT TO arguments by RFC 5321 §4.1.1.2-3 and §4.1.2, and
the relay tricks that must not hide a second destination (from the attacker's side)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.smtp_path import (
    MAX_LOCAL_PART,
    MAX_PATH,
    PathError,
    parse_mail_argument,
    parse_rcpt_argument,
)


def mail(argument: str, utf8: bool = False) -> tuple[str, dict[str, str | None]]:
    parsed = parse_mail_argument(argument, utf8=utf8)
    return parsed.address, parsed.params


def rcpt(argument: str, utf8: bool = False) -> str:
    return parse_rcpt_argument(argument, utf8=utf8).address


def refused(argument: str, *, kind: str = "rcpt", utf8: bool = False) -> str:
    """The reply code and enhanced status of the refusal, e.g. "553 5.1.3"."""
    parse = parse_rcpt_argument if kind == "rcpt" else parse_mail_argument
    with pytest.raises(PathError) as caught:
        parse(argument, utf8=utf8)
    reply = caught.value.reply
    assert reply[0] == "5" and reply == str(caught.value)
    return " ".join(reply.split()[:2])


# -- the null reverse-path and ordinary paths ------------------------------------------------

def test_null_sender() -> None:
    # RFC 5321 §4.5.5: notifications are sent with MAIL FROM:<>.
    assert mail("FROM:<>") == ("", {})
    assert mail("FROM:<> BODY=8BITMIME") == ("", {"BODY": "8BITMIME"})


def test_null_recipient_is_refused() -> None:
    assert refused("TO:<>") == "501 5.1.3"


@pytest.mark.parametrize(("argument", "address"), [
    ("FROM:<alice@example.test>", "alice@example.test"),
    ("from:<alice@example.test>", "alice@example.test"),       # keywords: any case
    ("FROM: <alice@example.test>", "alice@example.test"),      # DEVIATION: a space allowed
    ("FROM:alice@example.test", "alice@example.test"),         # DEVIATION: no brackets
    ("FROM:<Alice.Smith+tag@Mail.Example.Test>", "Alice.Smith+tag@Mail.Example.Test"),
    ("FROM:<a!#$%&'*+-/=?^_`{|}~@example.test>", "a!#$%&'*+-/=?^_`{|}~@example.test"),
])
def test_ordinary_paths(argument: str, address: str) -> None:
    assert mail(argument)[0] == address


def test_wrong_keyword_is_a_syntax_error() -> None:
    assert refused("TO:<a@example.test>", kind="mail") == "501 5.5.4"
    assert refused("FROM:<a@example.test>") == "501 5.5.4"
    assert refused("<a@example.test>") == "501 5.5.4"
    assert refused("") == "501 5.5.4"


def test_missing_closing_bracket() -> None:
    assert refused("TO:<bob@example.test") == "501 5.1.3"


def test_postmaster_without_domain_is_a_recipient_only() -> None:
    # RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> (any case) needs no domain.
    assert rcpt("TO:<Postmaster>") == "postmaster"
    assert rcpt("TO:<POSTMASTER>") == "postmaster"
    assert refused("FROM:<postmaster>", kind="mail") == "553 5.1.3"
    assert refused("TO:<bob>") == "553 5.1.3"


# -- source routes ------------------------------------------------------------------------------

@pytest.mark.parametrize("argument", [
    "TO:<@relay.example:bob@example.test>",
    "TO:<@one.example,@two.example:bob@example.test>",
])
def test_source_route_is_dropped(argument: str) -> None:
    # RFC 5321 §4.1.1.3: "MUST BE accepted, SHOULD NOT be used, and SHOULD be ignored".
    assert rcpt(argument) == "bob@example.test"


def test_source_route_cannot_smuggle_a_second_address() -> None:
    # What follows the colon is the one mailbox, and it must be well-formed.
    assert refused("TO:<@local.example:bob@remote.example@local.example>") == "553 5.1.3"
    assert refused("TO:<@relay.example>") == "553 5.1.3"


# -- quoted local parts and address literals -----------------------------------------------------

@pytest.mark.parametrize("local", ['"john doe"', '"a\\"b"', '"a@b"', '"a\\\\b"', '""',
                                   '"(comment?)"'])
def test_quoted_local_parts(local: str) -> None:
    assert rcpt(f"TO:<{local}@example.test>") == f"{local}@example.test"


@pytest.mark.parametrize("argument", [
    'TO:<"unbalanced@example.test>',
    'TO:<"a"b@example.test>',
    'TO:<"a"@"b"@example.test>',
    'TO:<"a\\',
])
def test_broken_quotes_are_refused(argument: str) -> None:
    with pytest.raises(PathError):
        parse_rcpt_argument(argument, utf8=False)


@pytest.mark.parametrize("domain", ["[192.0.2.1]", "[IPv6:2001:db8::1]",
                                    "[IPv6:::ffff:192.0.2.1]", "[x-tag:some-content]"])
def test_address_literals(domain: str) -> None:
    # RFC 5321 §4.1.3.
    assert rcpt(f"TO:<bob@{domain}>") == f"bob@{domain}"


@pytest.mark.parametrize("domain", ["[192.0.2.1", "192.0.2.1]", "[]",
                                    "[a b]", "[:x]", "exa mple.test", "-x.example", "x-.example",
                                    "example..test", ".example.test", "example.test."])
def test_bad_domains(domain: str) -> None:
    assert refused(f"TO:<bob@{domain}>") == "553 5.1.3"


@pytest.mark.parametrize("domain", [
    "127.0.0.1", "192.0.2.1", "10.1.2.3", "0.0.0.0", "255.255.255.255",
    "127.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1",  # inet_aton spellings
    "1.2.3.4.5", "mail.123", "example.42",                             # numeric top label
])
@pytest.mark.parametrize("kind", ["rcpt", "mail"])
def test_a_bare_ip_address_is_not_a_domain(domain: str, kind: str) -> None:
    # RFC 5321 §4.1.3: an IP address is written as a bracketed literal; RFC 1123 §2.1 and
    # RFC 3696 §2: no top-level domain is all-numeric. "user@127.0.0.1" is refused like a
    # malformed address, at MAIL and at RCPT alike.
    keyword = "TO" if kind == "rcpt" else "FROM"
    assert refused(f"{keyword}:<bob@{domain}>", kind=kind) == "553 5.1.3"
    assert refused(f"{keyword}:bob@{domain}", kind=kind) == "553 5.1.3"
    assert refused(f"{keyword}:<@example.test:bob@{domain}>", kind=kind) == "553 5.1.3"


@pytest.mark.parametrize("domain", ["123.example", "1.example.test", "0x7f.example",
                                    "3com.test", "x1.y2", "example.test"])
def test_digits_inside_a_domain_are_fine(domain: str) -> None:
    assert rcpt(f"TO:<bob@{domain}>") == f"bob@{domain}"
    assert mail(f"FROM:<bob@{domain}>")[0] == f"bob@{domain}"


# -- the relay tricks of the module docstring (RFC 2505 §2.3 lists them) ---------------------------

def test_two_at_signs_are_a_syntax_error() -> None:
    # "user@remote@local": a naive split at the last @ would accept it for local and a
    # sendmail-style router deliver it to remote.
    assert refused("TO:<user@remote.example@example.test>") == "553 5.1.3"


@pytest.mark.parametrize("local", ["user%remote.example", "remote.example!user"])
def test_percent_hack_and_bang_path_are_only_local_parts(local: str) -> None:
    # Legal atext: the address is one mailbox in the given domain (no such user here),
    # never a route to remote.example.
    address = rcpt(f"TO:<{local}@example.test>")
    assert address == f"{local}@example.test"
    assert address.rpartition("@")[2] == "example.test"


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\x1b", "\x7f", "\t"])
def test_control_characters_are_refused(char: str) -> None:
    assert refused(f"TO:<bob{char}@example.test>") == "501 5.5.2"
    assert refused(f"FROM:<alice@example.test> ENVID=a{char}b", kind="mail") == "501 5.5.2"


def test_unbracketed_address_takes_nothing_before_parameters() -> None:
    assert rcpt("TO:bob@example.test") == "bob@example.test"
    assert parse_rcpt_argument("TO:bob@example.test NOTIFY=NEVER",
                               utf8=False).params == {"NOTIFY": "NEVER"}
    assert refused("TO:bob@example.test,eve@remote.example") == "553 5.1.3"


# -- SMTPUTF8 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["δοκιμή@παράδειγμα.δοκιμή", "用户@例子.广告",
                                     "jörg@example.test", "bob@bücher.example"])
def test_utf8_addresses_need_smtputf8(address: str) -> None:
    # RFC 6531 §3.5 / §3.7.4.
    assert refused(f"TO:<{address}>") == "553 5.6.7"
    assert rcpt(f"TO:<{address}>", utf8=True) == address


def test_utf8_does_not_loosen_the_rest() -> None:
    assert refused("TO:<jörg@remote.example@example.test>", utf8=True) == "553 5.1.3"
    assert refused("TO:<jö rg@example.test>", utf8=True) == "553 5.1.3"


# -- parameters ------------------------------------------------------------------------------------

def test_parameter_keywords_are_upper_cased_and_values_keep_their_case() -> None:
    # RFC 3461 §4.4: ENVID is xtext; RFC 3461 §4.2: ORCPT's address is case-sensitive.
    address, params = mail("FROM:<a@example.test> size=1000 Ret=HDRS envid=QQ+2Bid SMTPUTF8",
                           utf8=True)
    assert address == "a@example.test"
    assert params == {"SIZE": "1000", "RET": "HDRS", "ENVID": "QQ+2Bid", "SMTPUTF8": None}
    params = parse_rcpt_argument("TO:<b@example.test> NOTIFY=SUCCESS,FAILURE "
                                 "ORCPT=rfc822;Bob+2BX@Example.Test", utf8=False).params
    assert params == {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;Bob+2BX@Example.Test"}


@pytest.mark.parametrize("argument", [
    "FROM:<a@example.test> SIZE=1 SIZE=2",
    "FROM:<a@example.test> SIZE=1 size=2",
    "FROM:<a@example.test> BODY=7BIT BODY=8BITMIME",
])
def test_duplicate_parameters_are_refused(argument: str) -> None:
    with pytest.raises(PathError, match="given twice"):
        parse_mail_argument(argument, utf8=False)


@pytest.mark.parametrize("argument", [
    "FROM:<a@example.test>SIZE=1",          # no space after the path
    "FROM:<a@example.test> =1",
    "FROM:<a@example.test> -X=1",
    "FROM:<a@example.test> SIZE=",
    "FROM:<a@example.test> SIZE=a=b",
    "FROM:<a@example.test> X_Y=1",
])
def test_malformed_parameters_are_refused(argument: str) -> None:
    assert refused(argument, kind="mail").startswith("501 5.5.4")


def test_several_spaces_between_parameters_are_fine() -> None:
    assert mail("FROM:<a@example.test>  SIZE=1   BODY=8BITMIME")[1] == {
        "SIZE": "1", "BODY": "8BITMIME"}


# -- limits, at the limit and one past (RFC 5321 §4.5.3.1) -----------------------------------------

def test_local_part_limit() -> None:
    at_limit = "a" * MAX_LOCAL_PART
    assert rcpt(f"TO:<{at_limit}@example.test>") == f"{at_limit}@example.test"
    assert refused(f"TO:<{at_limit}a@example.test>") == "553 5.1.3"
    quoted = '"' + "b" * (MAX_LOCAL_PART - 2) + '"'
    assert rcpt(f"TO:<{quoted}@example.test>") == f"{quoted}@example.test"
    assert refused(f'TO:<"{"b" * (MAX_LOCAL_PART - 1)}"@example.test>') == "553 5.1.3"


def _domain_of_length(n: int) -> str:
    labels: list[str] = []
    while n > 0:
        size = min(63, n)
        if n - size == 1:   # never leave a remainder of one character for ".x"
            size -= 2
        labels.append("d" * size)
        n -= size + 1
    return ".".join(labels)


def test_path_limit() -> None:
    local = "a" * 10
    domain = _domain_of_length(MAX_PATH - len(local) - 1)
    at_limit = f"{local}@{domain}"
    assert len(at_limit) == MAX_PATH
    assert rcpt(f"TO:<{at_limit}>") == at_limit
    longer = f"{local}a@{domain}"
    assert refused(f"TO:<{longer}>") == "501 5.1.3"


# -- any input: a path or a PathError, never another exception -------------------------------------

_ALPHABET = st.sampled_from([*'<>@:.,"\\[]()% !=+-_aZ9é用 \t\r\n\x00\x7f', "IPv6:", "FROM:",
                             "TO:"])


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(_ALPHABET, max_size=60).map("".join)),
       st.booleans(), st.booleans())
def test_any_text_parses_or_raises_path_error(text: str, utf8: bool, as_mail: bool) -> None:
    for argument in (text, ("FROM:" if as_mail else "TO:") + text):
        try:
            parsed = (parse_mail_argument if as_mail else parse_rcpt_argument)(
                argument, utf8=utf8)
        except PathError as exc:
            assert exc.reply[:3] in ("501", "553")
            continue
        # What parses is one mailbox (or <> / Postmaster): never control characters,
        # never non-ASCII without SMTPUTF8, never longer than a path may be.
        assert len(parsed.address) <= MAX_PATH
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in parsed.address)
        assert utf8 or parsed.address.isascii()
        assert all(k == k.upper() for k in parsed.params)
