"""Unit tests of the IMAP extensions' pieces: the grammar of MOVE, ID, LIST-EXTENDED,
CREATE-SPECIAL-USE, MULTIAPPEND, GETQUOTA(ROOT), COMPRESS; special-use resolution by name;
the quota arithmetic; the DEFLATE wrapper's bounds; the configuration tables."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.config import ConfigError, load_config
from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap import specialuse
from mailkeep.proto.imap.grammar import ParseError, parse_command
from mailkeep.proto.imap.mutf7 import InvalidMailboxName
from mailkeep.proto.imap.sequence import SequenceSet
from mailkeep.server.compress import CompressionError, Deflate
from mailkeep.store.base import Usage
from mailkeep.store.quota import Quota
from tests.unit.test_config import MINIMAL, write

# -- grammar ---------------------------------------------------------------------------------


def test_move_and_uid_move() -> None:
    assert parse_command(b"a MOVE 2:4 foo") == ext.Move("a", SequenceSet.parse("2:4"), "foo")
    assert parse_command(b"a UID MOVE 42:69 foo") == \
        ext.Move("a", SequenceSet.parse("42:69"), "foo", uid=True)
    for bad in (b"a MOVE 2:4", b"a MOVE foo bar", b"a UID MOVE"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_id_rfc2971_examples_and_limits() -> None:
    cmd = parse_command(b'a023 ID ("name" "sodr" "version" "19.34" "vendor" '
                        b'"Pink Floyd Music Limited")')
    assert cmd == ext.Id("a023", (("name", "sodr"), ("version", "19.34"),
                                  ("vendor", "Pink Floyd Music Limited")))
    assert parse_command(b"a ID NIL") == ext.Id("a", None)
    assert parse_command(b'a ID ("os" NIL)') == ext.Id("a", (("os", None),))
    assert parse_command(b'a ID ("x" {3}\r\na\r\n)') == ext.Id("a", (("x", "a\r\n"),))
    # RFC 2971 §3.3 limits: at them is fine, one past is BAD
    at_limit = parse_command(b'a ID ("' + b"k" * 30 + b'" "' + b"v" * 1024 + b'")')
    assert isinstance(at_limit, ext.Id) and at_limit.fields == (("k" * 30, "v" * 1024),)
    thirty = b"a ID (" + b" ".join(b'"k%d" "v"' % i for i in range(30)) + b")"
    assert len(parse_command(thirty).fields or ()) == 30  # type: ignore[union-attr]
    too_many = b"a ID (" + b" ".join(b'"k%d" "v"' % i for i in range(31)) + b")"
    for bad in (b'a ID ("' + b"k" * 31 + b'" "v")', b'a ID ("k" "' + b"v" * 1025 + b'")',
                too_many, b"a ID", b'a ID ("name")', b"a ID name"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_list_extended_syntax() -> None:
    plain = parse_command(b'a LIST "" %')
    assert plain == g.ListMailboxes("a", "", "%") and plain.options is None  # type: ignore[union-attr]
    cmd = parse_command(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Fruit.%") '
                        b"RETURN (CHILDREN STATUS (MESSAGES unseen) SPECIAL-USE)")
    assert isinstance(cmd, g.ListMailboxes) and cmd.options is not None
    assert cmd.patterns == ("INBOX", "Fruit.%") and cmd.pattern == "INBOX"
    assert cmd.options.selection == {"SUBSCRIBED", "RECURSIVEMATCH"}
    assert cmd.options.returns == {"CHILDREN", "STATUS", "SPECIAL-USE"}
    assert cmd.options.status == ("MESSAGES", "UNSEEN")
    assert cmd.options.wants("SUBSCRIBED")  # implied by the selection option
    # an empty selection list makes an extended LIST; a one-element pattern list too
    assert parse_command(b'a LIST () "" %').options == ext.ListOptions()  # type: ignore[union-attr]
    assert parse_command(b'a LIST "" (%)').options == ext.ListOptions()  # type: ignore[union-attr]
    # a literal pattern ending in ")" is still a plain LIST
    assert parse_command(b'a LIST "" {2}\r\nx)').options is None  # type: ignore[union-attr]
    for bad in (b'a LIST (RECURSIVEMATCH) "" *', b'a LIST (FOO) "" *',
                b'a LIST "" * RETURN (FOO)', b'a LIST "" * RETURN (STATUS (SIZE))',
                b'a LIST "" ()', b'a LIST "" * RETURN', b'a LIST "" * CHILDREN'):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_create_special_use() -> None:
    assert parse_command(b"a CREATE x").uses is None  # type: ignore[union-attr]
    assert parse_command(b"a CREATE MySpecial (USE (\\drafts \\Sent))") == \
        g.Create("a", "MySpecial", ("\\Drafts", "\\Sent"))
    assert parse_command(b"a CREATE y (USE ())") == g.Create("a", "y", ())
    assert parse_command(b"a CREATE z (USE (\\X-Odd))") == g.Create("a", "z", ("\\X-Odd",))
    for bad in (b"a CREATE x (COLOR red)", b"a CREATE x (USE (\\Sent) USE (\\Trash))",
                b"a CREATE x (USE Sent)", b"a CREATE x ()"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_multiappend() -> None:
    cmd = parse_command(b'a APPEND box (\\Seen) {2}\r\nhi (\\Flagged) '
                        b'" 7-Feb-1994 22:43:04 -0800" {3}\r\nyou {1+}\r\n!')
    assert isinstance(cmd, g.Append)
    assert [(m.flags, m.message) for m in cmd.messages] == \
        [(("\\Seen",), b"hi"), (("\\Flagged",), b"you"), ((), b"!")]
    assert cmd.messages[1].internaldate is not None
    with pytest.raises(ParseError):
        parse_command(b"a APPEND box {2}\r\nhi ")
    # RFC 6855 §4: UTF8 (~{n}...) only once UTF8=ACCEPT is enabled
    with pytest.raises(ParseError):
        parse_command(b"a APPEND box UTF8 (~{2}\r\nhi)")
    utf8 = parse_command(b"a APPEND box UTF8 (~{2}\r\nhi)", utf8=True)
    assert isinstance(utf8, g.Append) and utf8.utf8 and utf8.message == b"hi"


def test_quota_and_compress_commands() -> None:
    assert parse_command(b'a GETQUOTA ""') == ext.GetQuota("a", "")
    assert parse_command(b"a GETQUOTAROOT inbox") == ext.GetQuotaRoot("a", "INBOX")
    assert parse_command(b"a COMPRESS deflate") == ext.Compress("a", "DEFLATE")
    with pytest.raises(ParseError):
        parse_command(b"a SETQUOTA \"\" (STORAGE 512)")


def test_utf8_mailbox_names_only_when_enabled() -> None:
    raw = "a SELECT \"Entwürfe\"".encode()
    assert isinstance(parse_command(raw).mailbox, InvalidMailboxName)  # type: ignore[union-attr]
    assert parse_command(raw, utf8=True).mailbox == "Entwürfe"  # type: ignore[union-attr]
    # RFC 6855 §3: in UTF-8 mode "&" is itself, not the start of modified UTF-7
    assert parse_command(b'a SELECT "Entw&APw-rfe"', utf8=True).mailbox == "Entw&APw-rfe"  # type: ignore[union-attr]
    assert isinstance(parse_command(b'a SELECT "\xff"', utf8=True).mailbox,  # type: ignore[union-attr]
                      InvalidMailboxName)


# -- special uses by name ------------------------------------------------------------------


def test_special_use_resolution() -> None:
    folders = ["INBOX", "Sent Items", "Sent", "papierkorb", "INBOX.Junk", "Entwürfe", "Other"]
    uses = specialuse.resolve(folders, {})
    assert uses == {"Sent": ["\\Sent"], "papierkorb": ["\\Trash"], "INBOX.Junk": ["\\Junk"],
                    "Entwürfe": ["\\Drafts"]}
    assert specialuse.missing(uses) == ["\\Archive"]
    # an explicit use takes that use off the names
    uses = specialuse.resolve(folders, {"Other": ("\\Sent", "\\Archive")})
    assert uses["Other"] == ["\\Sent", "\\Archive"] and "Sent" not in uses
    # explicit uses of folders that no longer exist are ignored
    assert "Gone" not in specialuse.resolve(folders, {"Gone": ("\\Trash",)})
    # configured names replace the defaults
    names = dict(specialuse.DEFAULT_NAMES, **{specialuse.SENT: ("Sent Items",)})
    assert specialuse.resolve(folders, {}, names)["Sent Items"] == ["\\Sent"]


# -- quota ----------------------------------------------------------------------------------


def test_quota_limits_and_response_units() -> None:
    q = Quota(octets=10 * 1024, messages=3)
    assert q.limited and not Quota().limited
    assert q.exceeded(Usage(10 * 1024 - 10, 1), 10, 1) is None  # exactly at the limit
    assert q.exceeded(Usage(10 * 1024 - 10, 1), 11, 1) == "STORAGE"
    assert q.exceeded(Usage(0, 3), 1, 1) == "MESSAGE"
    assert q.resources(Usage(1025, 2)) == [("STORAGE", 2, 10), ("MESSAGE", 2, 3)]
    assert Quota(messages=5).resources(Usage(10**9, 1)) == [("MESSAGE", 1, 5)]
    assert Quota().exceeded(Usage(10**12, 10**9), 10**9, 1) is None


# -- DEFLATE ----------------------------------------------------------------------------------


def test_deflate_round_trip_and_flush() -> None:
    server = Deflate(chunk=1024)
    client_in = zlib.decompressobj(-15)
    wire = server.compress(b"* OK hello\r\n" * 100)
    flushed = server.flush()
    assert flushed and server.flush() == b""  # nothing new since: no empty block
    assert client_in.decompress(wire + flushed) == b"* OK hello\r\n" * 100
    client_out = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = client_out.compress(b"a1 NOOP\r\n") + client_out.flush(zlib.Z_SYNC_FLUSH)
    assert server.inflate(data) == b"a1 NOOP\r\n" and not server.pending


@given(st.binary(min_size=0, max_size=5000), st.integers(1, 700))
def test_deflate_inflates_in_bounded_chunks(payload: bytes, chunk: int) -> None:
    server = Deflate(chunk=chunk)
    client = zlib.compressobj(9, zlib.DEFLATED, -15)
    wire = client.compress(payload) + client.flush(zlib.Z_SYNC_FLUSH)
    out = b""
    piece = server.inflate(wire)
    while True:
        assert len(piece) <= chunk
        out += piece
        if not server.pending:
            break
        piece = server.inflate(b"")
    assert out == payload


def test_deflate_refuses_garbage_and_a_finished_stream() -> None:
    with pytest.raises(CompressionError):
        Deflate().inflate(b"\xff\xff\xff\xffnot deflate")
    client = zlib.compressobj(6, zlib.DEFLATED, -15)
    finished = client.compress(b"x") + client.flush(zlib.Z_FINISH)
    with pytest.raises(CompressionError):
        Deflate().inflate(finished)


# -- configuration -----------------------------------------------------------------------------


def test_special_use_and_store_tables(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '[imap.special_use]\ncreate = false\n'
                            'sent = ["Gesendet", "Sent"]\n[store]\nquota = 1048576\n'
                            "quota_messages = 100\nquota_full_retry = 60\n"))
    assert cfg.imap.special_use.create is False
    assert cfg.imap.special_use.names["\\Sent"] == ("Gesendet", "Sent")
    assert cfg.imap.special_use.names["\\Trash"] == specialuse.DEFAULT_NAMES["\\Trash"]
    assert (cfg.store.quota, cfg.store.quota_messages, cfg.store.quota_full_retry) == \
        (1048576, 100, 60.0)
    defaults = load_config(write(tmp_path, MINIMAL))
    assert defaults.store.quota == 0 and defaults.imap.special_use.create


@pytest.mark.parametrize(("text", "key"), [
    ('[imap.special_use]\nsent = []\n', "imap.special_use.sent"),
    ('[imap.special_use]\nsent = [".bad"]\n', "imap.special_use.sent"),
    ('[imap.special_use]\nsent = ["INBOX"]\n', "imap.special_use.sent"),
    ('[imap.special_use]\nspam = ["Spam"]\n', "imap.special_use.spam"),
    ('[imap.special_use]\ncreate = "yes"\n', "imap.special_use.create"),
    ("[store]\nquota = -1\n", "store.quota"),
    ("[store]\nquota_full_retry = 0\n", "store.quota_full_retry"),
    ("[store]\nlimit = 5\n", "store.limit"),
])
def test_bad_special_use_and_store_values(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + text))
    assert [p.split(":")[0] for p in info.value.problems] == [key]
