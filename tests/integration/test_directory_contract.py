"""One contract, every directory backend: file, SQLite, PostgreSQL (real server) and LDAP
(real slapd). The same accounts (tests/support/directory_data.py) live in each, stored the
way each stores them; every test here runs against all four.

A backend that is down or slow must raise DirectoryUnavailable within its timeout (the
doors turn that into 454 4.7.0 / NO [UNAVAILABLE] / -ERR [SYS/TEMP]): never hang, never
answer "wrong password".
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailkeep.directory.apppasswords import AppPassword, new_app_password
from mailkeep.directory.base import (
    SERVICES,
    CheckedDirectory,
    DirectoryUnavailable,
    UserDirectory,
)
from mailkeep.directory.front import DirectoryFront
from mailkeep.directory.passwords import hash_password
from tests.support.blackhole import blackhole, refused_port
from tests.support.directory_backends import (
    APP_LABEL,
    APP_SERVICES,
    KINDS,
    BackendSetup,
    ldap_options,
    make_backend,
)
from tests.support.directory_data import BY_NAME, PEOPLE

# Every test is bounded: a hung backend fails the test instead of hanging the suite.
BOUND = 30.0

INJECTIONS = ["*", "alice*", "*)(uid=*", "alice)(|(uid=*", "*)(|(mail=*", "al\\ice",
              "alice\\", "alice\x00", "\x00", "(", ")", "\\", "*@example.test",
              "alice@example.test)(uid=*", "\\2a", "alice\\00"]


@pytest.fixture(params=KINDS)
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BackendSetup]:
    kind = str(request.param)
    slapd = request.getfixturevalue("slapd_server") if kind == "ldap" else None
    pg = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    async with asyncio.timeout(BOUND):
        made = await make_backend(kind, tmp_path, slapd=slapd, pg=pg)
    try:
        yield made
    finally:
        async with asyncio.timeout(BOUND):
            await made.close()


async def _auth(d: UserDirectory, login: str, password: str, service: str = "imap"
                ) -> object:
    async with asyncio.timeout(BOUND):
        return await d.authenticate(login, password, service)


# -- who logs in --------------------------------------------------------------------------


async def test_login_by_name_and_by_every_address(setup: BackendSetup) -> None:
    d = setup.raw()
    for person in PEOPLE:
        for login in (person.name, person.name.upper(), *person.addresses,
                      person.addresses[0].upper()):
            account = await _auth(d, login, person.password)
            assert account is not None, (setup.kind, login)
            assert account.name == person.name
            assert set(account.addresses) == set(person.addresses)
            assert set(account.groups) == set(person.groups)


async def test_every_service_accepts_the_main_password(setup: BackendSetup) -> None:
    d = setup.raw()
    for service in SERVICES:
        assert await _auth(d, "bob", "bob-pw-2", service) is not None, service


async def test_migrated_dovecot_hash_logs_in(setup: BackendSetup) -> None:
    # carol's password is a {SHA512-CRYPT} hash (users file, SQL) or {CRYPT}$6$ (LDAP).
    account = await _auth(setup.raw(), "carol@example.test", "carol-pw-3")
    assert account is not None and account.name == "carol"


@pytest.mark.parametrize(("login", "password"), [
    ("alice", "bob-pw-2"), ("alice", "alice-pw-1 "), ("alice", "ALICE-PW-1"),
    ("nobody", "alice-pw-1"), ("nobody@example.test", "alice-pw-1"),
    ("alice@example.test.evil", "alice-pw-1"), ("", "alice-pw-1"),
])
async def test_wrong_password_or_unknown_login(setup: BackendSetup, login: str,
                                               password: str) -> None:
    assert await _auth(setup.raw(), login, password) is None


async def test_empty_password_never_logs_in(setup: BackendSetup) -> None:
    # LDAP: a simple bind with an empty password is an anonymous bind (RFC 4513 §5.1.2)
    # and "succeeds"; no backend may take it as a login.
    for d in (setup.raw(), setup.directory()):
        for login in ("alice", "alice@example.test", "nobody"):
            assert await _auth(d, login, "") is None


@pytest.mark.parametrize("login", INJECTIONS)
async def test_filter_and_query_injection_finds_nobody(setup: BackendSetup, login: str) -> None:
    d = setup.raw()
    # alice's password: the account an injected "*" or "alice*" would most likely reach.
    assert await _auth(d, login, "alice-pw-1") is None, login
    async with asyncio.timeout(BOUND):
        assert await d.lookup(login) is None


async def test_lookup_by_address_only(setup: BackendSetup) -> None:
    d = setup.raw()
    async with asyncio.timeout(BOUND):
        found = await d.lookup("A.Smith@Example.TEST")
        assert found is not None and found.name == "alice"
        assert set(found.groups) == {"staff", "helpdesk"}
        assert await d.lookup("nobody@example.test") is None
        assert await d.lookup("bob@example.test.evil") is None
        alias = await d.lookup("bob@example.test")
        assert alias is not None and alias.name == "bob"


# -- app passwords --------------------------------------------------------------------------


async def test_app_password_opens_only_its_doors(setup: BackendSetup) -> None:
    d = setup.raw()
    for service in SERVICES:
        account = await _auth(d, "alice@example.test", setup.app_secret, service)
        if service in APP_SERVICES:
            assert account is not None and account.name == "alice", service
        else:
            assert account is None, service
    # It is alice's alone, and the main password still works everywhere.
    assert await _auth(d, "bob", setup.app_secret) is None
    assert await _auth(d, "alice", "alice-pw-1", "pop3") is not None


async def test_app_password_use_is_recorded_and_listed(setup: BackendSetup) -> None:
    before = time.time()
    assert await _auth(setup.raw(), "alice", setup.app_secret) is not None
    admin = setup.admin()
    apps = await admin.list_app_passwords("alice")
    assert [(a.label, a.services) for a in apps] == [(APP_LABEL, APP_SERVICES)]
    assert apps[0].last_used is not None and apps[0].last_used >= int(before)
    assert apps[0].created > 0


async def test_revoked_app_password_stops_working(setup: BackendSetup) -> None:
    d = setup.directory(cache_ttl=0)
    assert await _auth(d, "alice", setup.app_secret) is not None
    assert await setup.admin().revoke_app_password("alice", APP_LABEL)
    assert not await setup.admin().revoke_app_password("alice", APP_LABEL)
    if setup.kind == "file":
        await _wait_for_file_reload()
    assert await _auth(d, "alice", setup.app_secret) is None
    assert await _auth(d, "alice", "alice-pw-1") is not None


async def test_several_app_passwords_each_with_its_services(setup: BackendSetup) -> None:
    secret, stored = new_app_password()
    await setup.admin().add_app_password("alice", AppPassword("laptop", stored, ("pop3",),
                                                              time.time()))
    d = setup.raw()
    assert await _auth(d, "alice", secret, "pop3") is not None
    assert await _auth(d, "alice", secret, "imap") is None
    assert await _auth(d, "alice", setup.app_secret, "pop3") is None
    assert await _auth(d, "alice", setup.app_secret, "imap") is not None


# -- groups and policy ----------------------------------------------------------------------


async def test_send_as_groups_grant_send_as_others(setup: BackendSetup) -> None:
    d = setup.directory(send_as_groups=["HelpDesk"])
    alice = await _auth(d, "alice", "alice-pw-1")
    bob = await _auth(d, "bob", "bob-pw-2")
    assert alice is not None and alice.send_as_others
    assert bob is not None and not bob.send_as_others
    async with asyncio.timeout(BOUND):
        found = await d.lookup("alice@example.test")
    assert found is not None and found.send_as_others


# -- the credentials cache --------------------------------------------------------------------


async def test_cache_remembers_successes_only(setup: BackendSetup) -> None:
    d = setup.directory(cache_ttl=60)
    assert isinstance(d, DirectoryFront)
    for _ in range(3):
        assert await _auth(d, "alice", "wrong-pw") is None
    assert len(d.cache) == 0
    # Five connections at once (Thunderbird) share one verification, then the cache.
    async with asyncio.timeout(BOUND):
        results = await asyncio.gather(*[d.authenticate("alice", "alice-pw-1", "imap")
                                         for _ in range(5)])
    assert all(r is not None and r.name == "alice" for r in results)
    assert len(d.cache) == 1
    assert await _auth(d, "alice", "alice-pw-1", "pop3") is not None
    assert len(d.cache) == 2  # keyed by service too: an app password's limits hold


async def test_password_change_takes_effect(setup: BackendSetup) -> None:
    if not setup.manages_accounts:
        pytest.skip("LDAP passwords are changed in LDAP, not by mailkeep")
    d = setup.directory(cache_ttl=0)
    assert await _auth(d, "bob", "bob-pw-2") is not None
    await setup.admin().set_password("bob", hash_password("bob-new-pw"))
    if setup.kind == "file":
        await _wait_for_file_reload()
    assert await _auth(d, "bob", "bob-new-pw") is not None
    assert await _auth(d, "bob", "bob-pw-2") is None


async def _wait_for_file_reload() -> None:
    # The file backend looks at the file's mtime at most once a second.
    await asyncio.sleep(1.1)


async def test_file_backend_cache_is_cleared_when_the_file_changes(tmp_path: Path) -> None:
    setup = await make_backend("file", tmp_path)
    try:
        d = setup.directory(cache_ttl=3600)
        assert await _auth(d, "bob", "bob-pw-2") is not None
        await setup.admin().set_password("bob", hash_password("bob-new-pw"))
        await _wait_for_file_reload()
        assert await _auth(d, "bob", "bob-pw-2") is None  # not served from the cache
        assert await _auth(d, "bob", "bob-new-pw") is not None
    finally:
        await setup.close()


# -- down, slow, misconfigured ----------------------------------------------------------------


async def _expect_unavailable(d: UserDirectory, *, lookup: bool = True,
                              check: bool = False) -> None:
    async with asyncio.timeout(BOUND):
        with pytest.raises(DirectoryUnavailable):
            await d.authenticate("alice", "alice-pw-1", "imap")
        if lookup:
            with pytest.raises(DirectoryUnavailable):
                await d.lookup("alice@example.test")
        if check:  # the admin listener's /readyz asks this
            assert isinstance(d, CheckedDirectory)
            with pytest.raises(DirectoryUnavailable):
                await d.check()


async def test_check_passes_while_reachable_and_says_why_when_not(
        setup: BackendSetup) -> None:
    """CheckedDirectory: every backend has a cheap reachability check, seen through the
    front as well; it fails while the users file or database is gone, and passes again."""
    front, raw = setup.directory(), setup.raw()
    assert isinstance(front, CheckedDirectory) and isinstance(raw, CheckedDirectory)
    async with asyncio.timeout(BOUND):
        await front.check()
        await raw.check()
    if setup.kind in ("postgresql", "ldap"):
        return  # a server that is down: the refused and blackhole tests below
    name = "users.sqlite3" if setup.kind == "sqlite" else setup.options["path"]
    stored = setup.base_dir / name
    stored.rename(stored.with_name(name + ".away"))
    try:
        for d in (front, raw):
            with pytest.raises(DirectoryUnavailable, match=r"users|sqlite"):
                async with asyncio.timeout(BOUND):
                    await d.check()
    finally:
        stored.with_name(name + ".away").rename(stored)
    async with asyncio.timeout(BOUND):
        await front.check()
        await raw.check()


async def test_a_server_that_never_answers_is_a_temporary_failure(setup: BackendSetup) -> None:
    if setup.kind == "file":
        pytest.skip("the file backend has no server")
    with blackhole() as port:
        if setup.kind == "sqlite":
            # SQLite's "server" is the file: a writer holding it locked is the slow case.
            holder = sqlite3.connect(setup.base_dir / "users.sqlite3", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                await _expect_unavailable(setup.raw(timeout=0.5))
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            return
        if setup.kind == "postgresql":
            dsn = setup.options["dsn"].replace(setup.options["dsn"].split("@")[1].split("/")[0],
                                               f"127.0.0.1:{port}")
            d = setup.raw(dsn=dsn, timeout=1.0)
        else:
            d = setup.raw(uri=[f"ldaps://127.0.0.1:{port}"], timeout=1.0)
        await _expect_unavailable(d, check=True)


async def test_a_refused_connection_is_a_temporary_failure(setup: BackendSetup) -> None:
    if setup.kind in ("file", "sqlite"):
        pytest.skip("no network server")
    port = refused_port()
    if setup.kind == "postgresql":
        dsn = setup.options["dsn"].replace(setup.options["dsn"].split("@")[1].split("/")[0],
                                           f"127.0.0.1:{port}")
        d = setup.raw(dsn=dsn, timeout=1.0)
    else:
        d = setup.raw(uri=[f"ldap://127.0.0.1:{port}"], timeout=1.0)
    await _expect_unavailable(d, check=True)


# -- LDAP specifics (the other backends have no such parts) --------------------------------------


async def test_ldap_starttls_and_failover(slapd_server: object, tmp_path: Path) -> None:
    from mailkeep.directory.base import load_backend  # noqa: PLC0415
    from tests.support.ldapserver import Slapd  # noqa: PLC0415

    assert isinstance(slapd_server, Slapd)
    for uris in ([slapd_server.starttls_uri],
                 [f"ldaps://127.0.0.1:{refused_port()}", slapd_server.ldaps_uri]):
        d = load_backend("ldap", ldap_options(slapd_server, tmp_path, uri=uris, timeout=2.0),
                         tmp_path)
        try:
            for _ in range(3):  # the dead server is skipped after the first failure
                account = await _auth(d, "alice", "alice-pw-1")
                assert account is not None and account.name == "alice", uris
        finally:
            await d.close()


async def test_ldap_with_an_untrusted_certificate_sends_no_password(
    slapd_server: object, tmp_path: Path
) -> None:
    from mailkeep.directory.base import load_backend  # noqa: PLC0415
    from tests.support.ldapserver import Slapd  # noqa: PLC0415

    assert isinstance(slapd_server, Slapd)
    for uri in (slapd_server.ldaps_uri, slapd_server.starttls_uri):
        options = ldap_options(slapd_server, tmp_path, uri=[uri])
        del options["ca_file"]  # the system CAs do not know the test CA
        d = load_backend("ldap", options, tmp_path)
        try:
            await _expect_unavailable(d, lookup=False)
        finally:
            await d.close()


async def test_ldap_refused_service_account_is_not_a_wrong_password(
    slapd_server: object, tmp_path: Path
) -> None:
    from mailkeep.directory.base import load_backend  # noqa: PLC0415
    from tests.support.ldapserver import Slapd  # noqa: PLC0415

    assert isinstance(slapd_server, Slapd)
    options = ldap_options(slapd_server, tmp_path)
    (tmp_path / "ldap.secret").write_text("not-the-service-password\n")
    d = load_backend("ldap", options, tmp_path)
    try:
        await _expect_unavailable(d)
    finally:
        await d.close()


async def test_ldap_ambiguous_login_is_refused(slapd_server: object, tmp_path: Path) -> None:
    from mailkeep.directory.base import load_backend  # noqa: PLC0415
    from tests.support.ldapserver import Slapd  # noqa: PLC0415

    assert isinstance(slapd_server, Slapd)
    d = load_backend("ldap", ldap_options(slapd_server, tmp_path), tmp_path)
    try:
        assert await _auth(d, "twins@example.test", "twin-pw") is None
        assert await _auth(d, "twin1", "twin-pw") is not None
    finally:
        await d.close()


def test_people_are_distinct() -> None:
    assert len(BY_NAME) == len(PEOPLE)


async def test_ldap_active_directory_defaults(slapd_server: object, tmp_path: Path) -> None:
    """schema = "ad": sAMAccountName, userPrincipalName, mail and smtp: proxyAddresses log in;
    groups come from memberOf; a disabled account (userAccountControl bit 2) never matches.
    (slapd with a stand-in for AD's user schema: tests/support/directory_data.AD_SCHEMA.)"""
    from mailkeep.directory.base import load_backend  # noqa: PLC0415
    from tests.support.directory_data import AD_DN  # noqa: PLC0415
    from tests.support.ldapserver import Slapd  # noqa: PLC0415

    assert isinstance(slapd_server, Slapd)
    options = {**ldap_options(slapd_server, tmp_path), "schema": "ad", "base_dn": AD_DN}
    d = load_backend("ldap", options, tmp_path)
    try:
        for login in ("dave", "DAVE", "dave@corp.example.test", "dave@example.test",
                      "d.example@example.test"):
            account = await _auth(d, login, "dave-ad-pw")
            assert account is not None, login
            assert account.name == "dave"
            assert account.addresses == ("dave@example.test", "d.example@example.test")
            assert set(account.groups) == {"helpdesk", "mail users"}
        assert await _auth(d, "dave", "erin-ad-pw") is None
        assert await _auth(d, "erin", "erin-ad-pw") is None  # disabled
        assert await _auth(d, "erin@example.test", "erin-ad-pw") is None
        async with asyncio.timeout(BOUND):
            found = await d.lookup("D.Example@example.test")
            assert found is not None and found.name == "dave"
            # A UPN is a login name, not a mail address.
            assert await d.lookup("dave@corp.example.test") is None
    finally:
        await d.close()
