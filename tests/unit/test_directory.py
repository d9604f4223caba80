"""directory/: password hashing (passwords.py), the users-file backend (file.py), discovery."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from passlib.hash import bcrypt, sha256_crypt, sha512_crypt

import mailkeep.directory.file as file_mod
from mailkeep.directory import Account, DirectoryError, UserDirectory, load_directory, passwords
from mailkeep.directory.file import (
    FileDirectory,
    UserRecord,
    parse_users,
    read_users_file,
    write_users_file,
)
from mailkeep.directory.front import DirectoryFront
from mailkeep.directory.passwords import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    hash_password,
    is_supported,
    strip_scheme,
    verify_password,
)

# `openssl passwd -6 -salt saltsalt password` (computed once, checked again below if openssl
# is installed): a sha512-crypt hash with the default 5000 rounds, as Dovecot writes them.
SHA512_VECTOR = ("$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq."
                 "qc.eoxqOmSuNp2xS0ktL3nh/")
# `openssl passwd -5 -salt saltsalt password`
SHA256_VECTOR = "$5$saltsalt$gOjOtoMpVhru2uyjeJSEc/JaLQWOXMNmlOnj6T4AtC."


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    """One argon2id hash per test password, computed once (each costs tens of ms)."""
    return {pw: hash_password(pw) for pw in ("alice-pw", "bob-pw", "carol-pw")}


# -- passwords.py ---------------------------------------------------------------------------------


def test_new_hashes_are_argon2id_with_the_named_parameters() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$")
    params = h.split("$")[3]
    assert params == f"m={ARGON2_MEMORY_KIB},t={ARGON2_TIME_COST},p={ARGON2_PARALLELISM}"
    assert (ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM) == (19456, 2, 1)
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert not passwords.needs_update(h)


def test_new_hashes_are_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_known_sha512_crypt_vector() -> None:
    assert verify_password("password", "{SHA512-CRYPT}" + SHA512_VECTOR)
    assert verify_password("password", SHA512_VECTOR)  # without the prefix too
    assert not verify_password("Password", "{SHA512-CRYPT}" + SHA512_VECTOR)
    assert verify_password("password", "{SHA256-CRYPT}" + SHA256_VECTOR)
    assert not verify_password("passwor", "{SHA256-CRYPT}" + SHA256_VECTOR)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_known_vector_matches_openssl() -> None:
    out = subprocess.run(["openssl", "passwd", "-6", "-salt", "saltsalt", "password"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == SHA512_VECTOR


def test_known_vector_matches_passlib() -> None:
    computed = sha512_crypt.using(salt="saltsalt", rounds=5000).hash("password")
    assert computed == SHA512_VECTOR


@pytest.mark.parametrize(
    ("prefix", "make"),
    [
        ("{SHA512-CRYPT}", lambda pw: sha512_crypt.using(rounds=5000).hash(pw)),
        ("{SHA256-CRYPT}", lambda pw: sha256_crypt.using(rounds=5000).hash(pw)),
        ("{BLF-CRYPT}", lambda pw: bcrypt.using(rounds=4).hash(pw)),
        ("{BLF-CRYPT}", lambda pw: bcrypt.using(rounds=4, ident="2y").hash(pw)),
        ("{BCRYPT}", lambda pw: bcrypt.using(rounds=4).hash(pw)),
        ("{sha512-crypt}", lambda pw: sha512_crypt.using(rounds=5000).hash(pw)),
        ("{CRYPT}", lambda pw: sha512_crypt.using(rounds=5000).hash(pw)),
        ("{ARGON2ID}", hash_password),
        ("", lambda pw: bcrypt.using(rounds=4).hash(pw)),
    ],
)
def test_dovecot_migrated_hashes_verify(prefix: str, make: object) -> None:
    stored = prefix + make("s3cret wörd")  # type: ignore[operator]
    assert is_supported(stored)
    assert verify_password("s3cret wörd", stored)
    assert not verify_password("s3cret word", stored)
    assert not verify_password("", stored)


def test_dovecot_bcrypt_2y_identifier() -> None:
    stored = "{BLF-CRYPT}" + bcrypt.using(rounds=4, ident="2y").hash("pw")
    assert stored.startswith("{BLF-CRYPT}$2y$04$")
    assert verify_password("pw", stored)


def test_strip_scheme() -> None:
    assert strip_scheme("{SHA512-CRYPT}$6$x") == "$6$x"
    assert strip_scheme("  {blf-crypt}$2y$x ") == "$2y$x"
    assert strip_scheme("{PLAIN}x") == "{PLAIN}x"


@pytest.mark.parametrize(
    "stored",
    ["{PLAIN}secret", "secret", "{MD5-CRYPT}$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
     "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "{SSHA}abcdef", "{CLEARTEXT}pw", ""],
)
def test_unknown_scheme_is_not_supported(stored: str) -> None:
    assert not is_supported(stored)
    # even the right "password" does not verify against a scheme we do not support
    assert verify_password("secret", stored) is False
    assert verify_password("pw", stored) is False


class _Spy:
    def __init__(self, real: object) -> None:
        self.real = real
        self.hashes: list[str] = []

    def __call__(self, secret: str, hash: str, **kw: object) -> bool:
        self.hashes.append(hash)
        return self.real(secret, hash, **kw)  # type: ignore[operator,no-any-return]


def test_no_stored_hash_returns_false_after_verifying_the_dummy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = _Spy(passwords._CONTEXT.verify)
    monkeypatch.setattr(passwords._CONTEXT, "verify", spy)
    assert verify_password("mailkeep-dummy-password-never-matches", None) is False
    assert verify_password("anything", None) is False
    # Unknown users cost a real verification (of the dummy), not an early return.
    assert spy.hashes == [passwords.DUMMY_HASH, passwords.DUMMY_HASH]
    assert passwords.DUMMY_HASH.startswith("$argon2id$")
    spy.hashes.clear()
    assert verify_password("secret", "{PLAIN}secret") is False
    assert spy.hashes == [passwords.DUMMY_HASH]


@pytest.mark.parametrize("stored", ["$argon2id$garbage", "$6$broken", "{BLF-CRYPT}$2y$05$xx",
                                    "$2b$"])
def test_malformed_hash_of_known_scheme_never_raises(stored: str) -> None:
    ok = is_supported(stored)
    assert verify_password("x", stored) is False
    assert not ok  # and the users file loader should have refused it


def test_bcrypt_long_password_does_not_raise() -> None:
    stored = "{BLF-CRYPT}" + bcrypt.using(rounds=4).hash("a" * 72)
    assert verify_password("a" * 100, stored) in (True, False)


@pytest.mark.parametrize("scheme", ["bcrypt", "sha512"])
def test_nul_in_password_does_not_raise(scheme: str) -> None:
    stored = (bcrypt.using(rounds=4).hash("pw") if scheme == "bcrypt"
              else "{SHA512-CRYPT}" + SHA512_VECTOR)
    assert verify_password("pass\0word", stored) is False


# -- parse_users ----------------------------------------------------------------------------------


def doc(**users: dict[str, object]) -> dict[str, object]:
    return {"users": users}


def test_parse_users_good(hashes: dict[str, str]) -> None:
    records = parse_users(doc(
        alice={"password": hashes["alice-pw"], "addresses": ["Alice@Example.Test ",
                                                              "a.smith@example.test"]},
        app={"password": "{SHA512-CRYPT}" + SHA512_VECTOR, "addresses": ["noreply@example.test"],
             "send_as_others": True},
    ), "users.toml")
    assert records["alice"].account == Account("alice", ("alice@example.test",
                                                         "a.smith@example.test"), False)
    assert records["alice"].password_hash == hashes["alice-pw"]
    assert records["app"].account.send_as_others is True


def test_parse_users_reports_every_problem(hashes: dict[str, str]) -> None:
    with pytest.raises(DirectoryError) as info:
        parse_users({"users": {
            "Bad Name": {"password": hashes["alice-pw"]},
            "nopw": {"addresses": ["nopw@example.test"]},
            "plain": {"password": "{PLAIN}secret"},
            "badaddr": {"password": hashes["alice-pw"], "addresses": ["not an address", 5]},
            "badaddr2": {"password": hashes["alice-pw"], "addresses": ["no-at-sign"]},
            "typo": {"password": hashes["alice-pw"], "adresses": []},
            "sendas": {"password": hashes["alice-pw"], "send_as_others": "yes"},
            "flat": "x",
        }, "stray": 1}, "users.toml")
    message = str(info.value)
    assert message.startswith("users.toml: ")
    expected = [
        "stray: unknown key",
        "users.Bad Name: name must be",
        "users.nopw.password: missing",
        "users.plain.password: not a hash in a scheme mailkeep verifies",
        "users.badaddr.addresses: expected a list of strings",
        "users.badaddr2.addresses[0]: 'no-at-sign' is not an address",
        "users.typo.adresses: unknown key",
        "users.sendas.send_as_others: expected true or false",
        "users.flat: expected a table",
    ]
    for problem in expected:
        assert problem in message, problem
    keys = re.findall(r"(?:^users\.toml: |; )(stray|users\.[^:;]+): ", message)
    assert keys == [p.split(": ")[0] for p in expected]


def test_duplicate_address_across_users_refused(hashes: dict[str, str]) -> None:
    with pytest.raises(DirectoryError, match=r"users\.bob\.addresses\[1\]: "
                       r"shared@example\.test already belongs to alice"):
        parse_users(doc(
            alice={"password": hashes["alice-pw"], "addresses": ["shared@example.test"]},
            bob={"password": hashes["bob-pw"], "addresses": ["bob@example.test",
                                                            "SHARED@example.test"]},
        ), "users.toml")


def test_users_must_be_tables() -> None:
    with pytest.raises(DirectoryError, match="expected tables"):
        parse_users({"users": ["alice"]}, "u")


def test_empty_users_file_is_valid() -> None:
    assert parse_users({}, "u") == {}


async def test_account_name_equal_to_another_accounts_address(
    tmp_path: Path, hashes: dict[str, str]
) -> None:
    users = tmp_path / "users.toml"
    write_users_file(users, {
        "alice": UserRecord(Account("alice", ("bob@example.test",)), hashes["alice-pw"]),
        "bob@example.test": UserRecord(Account("bob@example.test", ("b@example.test",)),
                                       hashes["bob-pw"]),
    })
    try:
        directory = FileDirectory({"path": "users.toml"}, tmp_path)
    except DirectoryError:
        return  # refusing the file is a fine fix too
    try:
        found = await directory.lookup("bob@example.test")
        assert found is not None and found.name == "alice"
    finally:
        await directory.close()


# -- write/read users file ----------------------------------------------------------------------


def sample_records(hashes: dict[str, str]) -> dict[str, UserRecord]:
    return {
        "alice": UserRecord(Account("alice", ("alice@example.test", "a.smith@example.test")),
                            hashes["alice-pw"]),
        "bob": UserRecord(Account("bob", ("bob@example.test",)), hashes["bob-pw"]),
        "app.mailer+x": UserRecord(Account("app.mailer+x", ("noreply@example.test",), True),
                                   "{SHA512-CRYPT}" + SHA512_VECTOR),
        "empty": UserRecord(Account("empty", ()), hashes["carol-pw"]),
    }


def test_write_users_file_is_0600_and_reads_back_identically(
    tmp_path: Path, hashes: dict[str, str]
) -> None:
    path = tmp_path / "users.toml"
    records = sample_records(hashes)
    old_umask = os.umask(0)
    try:
        write_users_file(path, records)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_users_file(path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]  # no temp file left
    # rewriting replaces atomically and keeps the mode
    records.pop("bob")
    write_users_file(path, records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_users_file(path) == records


_name = st.from_regex(r"\A[a-z0-9][a-z0-9._+@-]{0,20}\Z")
_local = st.from_regex(r"\A[a-z0-9._%+=-]{1,12}\Z")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_name, st.tuples(st.lists(_local, max_size=3, unique=True),
                                        st.booleans()), max_size=5))
def test_write_read_round_trip(users: dict[str, tuple[list[str], bool]]) -> None:
    stored = "{SHA512-CRYPT}" + SHA512_VECTOR
    records = {
        name: UserRecord(Account(name, tuple(f"{local}@{i}.example.test" for local in locals_),
                                 send_as), stored)
        for i, (name, (locals_, send_as)) in enumerate(users.items())
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "users.toml"
        write_users_file(path, records)
        assert read_users_file(path) == records


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), (b"users = [\n", "not valid TOML"), (b"\xff\xfe", "cannot read")],
)
def test_read_users_file_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "users.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DirectoryError, match=match):
        read_users_file(path)


# -- FileDirectory --------------------------------------------------------------------------------


@pytest.fixture
def users_path(tmp_path: Path, hashes: dict[str, str]) -> Path:
    path = tmp_path / "users.toml"
    write_users_file(path, sample_records(hashes))
    return path


@pytest.fixture
async def directory(users_path: Path) -> Iterator[FileDirectory]:
    d = FileDirectory({"path": users_path.name}, users_path.parent)
    yield d  # type: ignore[misc]
    await d.close()


async def test_authenticate_by_name_and_by_any_address(directory: FileDirectory) -> None:
    for login in ("alice", "ALICE", " alice ", "alice@example.test", "A.Smith@Example.TEST"):
        account = await directory.authenticate(login, "alice-pw")
        assert account is not None and account.name == "alice", login
    app = await directory.authenticate("noreply@example.test", "password")
    assert app is not None and app.name == "app.mailer+x" and app.send_as_others


async def test_authenticate_wrong_password_or_unknown_user(
    directory: FileDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await directory.authenticate("alice", "bob-pw") is None
    assert await directory.authenticate("alice", "") is None
    assert await directory.authenticate("bob", "alice-pw") is None
    spy = _Spy(passwords._CONTEXT.verify)
    monkeypatch.setattr(passwords._CONTEXT, "verify", spy)
    assert await directory.authenticate("nobody", "alice-pw") is None
    assert await directory.authenticate("nobody@example.test", "alice-pw") is None
    assert spy.hashes == [passwords.DUMMY_HASH] * 2  # unknown users still cost a hash


async def test_lookup_only_by_address(directory: FileDirectory) -> None:
    alice = await directory.lookup("alice@example.test")
    assert alice is not None and alice.name == "alice"
    smith = await directory.lookup("A.SMITH@example.test")
    assert smith is not None and smith.name == "alice"
    assert await directory.lookup("alice") is None  # the bare account name is not an address
    assert await directory.lookup("empty") is None
    assert await directory.lookup("nobody@example.test") is None
    assert await directory.lookup("alice@example.test.evil") is None


async def test_file_directory_is_a_user_directory(directory: FileDirectory) -> None:
    assert isinstance(directory, UserDirectory)
    assert set(directory.records) == {"alice", "bob", "app.mailer+x", "empty"}


def _replace_users(path: Path, text: str | None, records: dict[str, UserRecord] | None) -> None:
    """Write a new file beside, rename it over (a new inode), and give it a later mtime."""
    old = path.stat().st_mtime_ns
    new = path.with_name("users.new")
    if records is not None:
        write_users_file(new, records)
    else:
        assert text is not None
        new.write_text(text)
    os.replace(new, path)
    later = old + 10_000_000_000
    os.utime(path, ns=(later, later))


async def test_file_is_reread_when_it_changes(
    directory: FileDirectory, users_path: Path, hashes: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    assert await directory.authenticate("carol", "carol-pw") is None
    records = sample_records(hashes)
    records["carol"] = UserRecord(Account("carol", ("carol@example.test",)), hashes["carol-pw"])
    del records["bob"]
    _replace_users(users_path, None, records)
    carol = await directory.authenticate("carol@example.test", "carol-pw")
    assert carol is not None and carol.name == "carol"
    assert await directory.authenticate("bob", "bob-pw") is None
    assert await directory.lookup("bob@example.test") is None
    found = await directory.lookup("carol@example.test")
    assert found is not None and found.name == "carol"


async def test_lookup_alone_notices_a_change(
    directory: FileDirectory, users_path: Path, hashes: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    records = sample_records(hashes)
    records["carol"] = UserRecord(Account("carol", ("carol@example.test",)), hashes["carol-pw"])
    _replace_users(users_path, None, records)
    assert await directory.lookup("carol@example.test") is not None


async def test_broken_rewrite_keeps_the_old_users(
    directory: FileDirectory, users_path: Path, hashes: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    for broken in ("[users.alice\npassword = ", "[users.x]\npassword = '{PLAIN}pw'\n"):
        _replace_users(users_path, broken, None)
        alice = await directory.authenticate("alice", "alice-pw")
        assert alice is not None and alice.name == "alice"
        assert await directory.lookup("bob@example.test") is not None
        assert set(directory.records) == {"alice", "bob", "app.mailer+x", "empty"}
    # and a fixed file is picked up after the broken one
    records = {"bob": sample_records(hashes)["bob"]}
    _replace_users(users_path, None, records)
    assert await directory.authenticate("alice", "alice-pw") is None
    assert await directory.authenticate("bob", "bob-pw") is not None


async def test_deleted_file_keeps_the_old_users(
    directory: FileDirectory, users_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    users_path.unlink()
    assert await directory.authenticate("alice", "alice-pw") is not None


async def test_unchanged_file_is_not_reread(
    directory: FileDirectory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    calls: list[Path] = []
    real = file_mod.read_users_file

    def counting(path: Path) -> dict[str, UserRecord]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(file_mod, "read_users_file", counting)
    for _ in range(3):
        assert await directory.lookup("alice@example.test") is not None
    assert calls == []


def test_file_directory_options(tmp_path: Path, users_path: Path) -> None:
    with pytest.raises(DirectoryError, match=r"directory\.colour: unknown key"):
        FileDirectory({"path": "users.toml", "colour": "blue"}, tmp_path)
    with pytest.raises(DirectoryError, match=r"directory\.path: expected a string"):
        FileDirectory({"path": 5}, tmp_path)
    with pytest.raises(DirectoryError, match="not found"):
        FileDirectory({"path": "missing.toml"}, tmp_path)


# -- load_directory -------------------------------------------------------------------------------


async def test_load_directory_file_backend_by_entry_point(users_path: Path) -> None:
    d = load_directory("file", {"path": "users.toml"}, users_path.parent)
    try:
        assert isinstance(d, DirectoryFront)
        assert isinstance(d.backend, FileDirectory)
        assert d.backend.path == users_path.resolve()
        assert await d.authenticate("bob", "bob-pw", "imap") is not None
    finally:
        await d.close()


def test_load_directory_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match=r"unknown backend 'nis' \(known: .*file"):
        load_directory("nis", {}, tmp_path)


async def test_swapped_users_symlink_is_reread(
    tmp_path: Path, hashes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_mod, "STAT_INTERVAL", 0)
    versions = tmp_path / "versions"
    versions.mkdir()
    records = sample_records(hashes)
    write_users_file(versions / "users-1.toml", records)
    records["carol"] = UserRecord(Account("carol", ("carol@example.test",)), hashes["carol-pw"])
    write_users_file(versions / "users-2.toml", records)
    later = (versions / "users-1.toml").stat().st_mtime_ns + 10_000_000_000
    os.utime(versions / "users-2.toml", ns=(later, later))
    (tmp_path / "users.toml").symlink_to("versions/users-1.toml")
    directory = FileDirectory({"path": "users.toml"}, tmp_path)
    try:
        assert await directory.lookup("carol@example.test") is None
        (tmp_path / "next").symlink_to("versions/users-2.toml")
        (tmp_path / "next").replace(tmp_path / "users.toml")
        assert await directory.lookup("carol@example.test") is not None
    finally:
        await directory.close()
