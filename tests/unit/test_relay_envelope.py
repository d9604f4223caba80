"""relay/envelope.py, results.py, credentials.py, nexthop.plan(): the pieces without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.relay.credentials import CredentialsError, read_credentials
from mailkeep.relay.envelope import (
    OutboundMessage,
    Recipient,
    mail_dsn_options,
    needs_smtputf8,
    rcpt_dsn_options,
    utf8_addr_xtext,
    xtext,
)
from mailkeep.relay.nexthop import MAX_RECIPIENTS_PER_TRANSACTION, address_problem, plan
from mailkeep.relay.results import PermanentFailure, Reply, TemporaryFailure, failure
from mailkeep.relay.routes import parse_delivery

# -- RFC 3461 xtext ---------------------------------------------------------------------------


def test_xtext_examples() -> None:
    assert xtext("bob@example.org") == "bob@example.org"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("é") == "+C3+A9"


def _xtext_decode(value: str) -> str:
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "+":
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(value[i]))
            i += 1
    return out.decode("utf-8")


@given(st.text())
def test_xtext_round_trips_and_stays_printable(value: str) -> None:
    encoded = xtext(value)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert _xtext_decode(encoded) == value


def test_utf8_addr_xtext() -> None:
    # RFC 6533 §3: non-ASCII and "+", "=", "\" as \x{HEX}.
    assert utf8_addr_xtext("jörg+x@bücher.test") == "j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.test"


def test_dsn_options() -> None:
    msg = OutboundMessage("a@example.test", b"x", ret="HDRS", envid="id 1")
    assert mail_dsn_options(msg) == ["RET=HDRS", "ENVID=id+201"]
    assert mail_dsn_options(OutboundMessage("a@example.test", b"x")) == []
    long_id = OutboundMessage("a@example.test", b"x", envid="x" * 101)
    assert mail_dsn_options(long_id) == []  # RFC 3461 §4.4: at most 100 characters
    assert rcpt_dsn_options(Recipient("b@x.test", notify=("failure", "delay"))) == [
        "NOTIFY=FAILURE,DELAY"]
    assert rcpt_dsn_options(Recipient("b@x.test", notify=("NEVER", "SUCCESS"))) == [
        "NOTIFY=NEVER"]
    assert rcpt_dsn_options(Recipient("b@x.test", orcpt="jörg@x.test")) == [
        "ORCPT=utf-8;j\\x{F6}rg@x.test"]
    assert rcpt_dsn_options(Recipient("b@x.test", notify=("BOGUS",))) == []


def test_needs() -> None:
    plain = OutboundMessage("a@example.test", b"Subject: x\r\n\r\nhi\r\n")
    assert not plain.needs_8bitmime()
    assert not needs_smtputf8(plain, [Recipient("b@x.test")])
    assert needs_smtputf8(plain, [Recipient("jörg@x.test")])
    assert needs_smtputf8(OutboundMessage("jörg@x.test", b""), [])
    assert needs_smtputf8(OutboundMessage("a@x.test", b"", smtputf8=True), [])
    assert OutboundMessage("a@x.test", "é".encode()).needs_8bitmime()


# -- replies and results ----------------------------------------------------------------------

@pytest.mark.parametrize(("code", "text", "enhanced", "rest"), [
    (250, "2.0.0 Ok: queued as 123", "2.0.0", "Ok: queued as 123"),
    (550, "5.1.1 <bob@x>: Recipient address rejected", "5.1.1",
     "<bob@x>: Recipient address rejected"),
    (451, "try again later", None, "try again later"),
    (550, "4.1.1 class mismatch is not an enhanced code", None,
     "4.1.1 class mismatch is not an enhanced code"),
    (554, "5.7.1 line one\n5.7.1 line two", "5.7.1", "line one / line two"),
    (421, "", None, ""),
])
def test_reply_parsing(code: int, text: str, enhanced: str | None, rest: str) -> None:
    reply = Reply.from_smtp(code, text)
    assert (reply.code, reply.enhanced, reply.text, reply.remote) == (code, enhanced, rest, True)


@given(st.integers(200, 599), st.text())
def test_any_reply_text_parses(code: int, text: str) -> None:
    reply = Reply.from_smtp(code, text)
    assert reply.code == code and reply.status[0] == str(code)[0]
    assert "\n" not in reply.text


def test_reply_status_and_str() -> None:
    assert Reply.from_smtp(451, "later").status == "4.0.0"
    assert str(Reply.from_smtp(550, "5.1.1 no")) == "550 5.1.1 no"
    local = Reply.local(556, "5.1.10", "null MX")
    assert not local.remote and str(local) == "556 5.1.10 null MX"
    assert isinstance(failure("x@y", local, None), PermanentFailure)
    assert isinstance(failure("x@y", Reply.local(451, "4.4.1", "later"), None), TemporaryFailure)


# -- credentials ------------------------------------------------------------------------------

def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("  user@example.test \n pass word with spaces \n\n")
    creds = read_credentials(path)
    assert creds.username == "user@example.test"
    assert creds.password == " pass word with spaces "
    for bad in ("only-user\n", "\npassword\n", "user\npassword\nextra\n"):
        path.write_text(bad)
        with pytest.raises(CredentialsError) as info:
            read_credentials(path)
        assert "password" not in str(info.value).replace("the password", "")
    path.write_bytes(b"user\n\xff\xfe\n")
    with pytest.raises(CredentialsError, match="UTF-8"):
        read_credentials(path)
    path.write_bytes(b"u\n" + b"p" * 5000)
    with pytest.raises(CredentialsError, match="over"):
        read_credentials(path)
    with pytest.raises(CredentialsError, match="cannot read"):
        read_credentials(tmp_path / "missing")


# -- planning ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "ok"), [
    ("bob@example.test", True),
    ('"odd one"@example.test', True),
    ("jörg@bücher.test", True),
    ("bob", False),
    ("@example.test", False),
    ("bob@", False),
    ("bob smith@example.test", False),
    ("bob@example.test>", False),
    ("bob\r\nRCPT TO:<x@y>@example.test", False),
    ("bob@[192.0.2.1]", False),
    ("bob@exa mple.test", False),
    ("bob@a..test", False),
])
def test_address_problem(address: str, ok: bool) -> None:
    assert (address_problem(address) is None) == ok


def test_plan_groups_per_domain_and_route(tmp_path: Path) -> None:
    config, problems = parse_delivery({
        "routes": {"up": {"type": "smarthost", "host": "smtp.example"}},
        "domains": {"c.test": "up", "d.test": "up"},
        "tls_policy": {"d.test": "verify"},
    }, tmp_path, hostname="relay.test")
    assert problems == []
    rcpts = [Recipient(a) for a in ("1@a.test", "2@b.test", "3@A.TEST", "4@c.test",
                                    "5@d.test", "bad", "6@c.test")]
    destinations, refused = plan(config, rcpts)
    assert [r.recipient for r in refused] == ["bad"]
    assert refused[0].reply.status == "5.1.3"  # type: ignore[union-attr]
    groups = [(d.route.name, d.domains, d.tls_policy, [r.address for r in d.recipients])
              for d in destinations]
    assert groups == [
        ("mx", ("a.test",), "may", ["1@a.test", "3@A.TEST"]),
        ("mx", ("b.test",), "may", ["2@b.test"]),
        # One smarthost transaction for both domains: the route's default policy is verify.
        ("up", ("c.test", "d.test"), "verify", ["4@c.test", "5@d.test", "6@c.test"]),
    ]


def test_plan_splits_big_groups(tmp_path: Path) -> None:
    config, _ = parse_delivery({}, tmp_path, hostname="relay.test")
    rcpts = [Recipient(f"u{i}@a.test") for i in range(MAX_RECIPIENTS_PER_TRANSACTION * 2 + 1)]
    destinations, _ = plan(config, rcpts)
    assert [len(d.recipients) for d in destinations] == [100, 100, 1]
