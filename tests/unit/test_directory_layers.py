"""The directory's shared layers, without servers: LDAP filter escaping (RFC 4515), the
credentials cache, the front's options and policy, app passwords, SQL parameters, the
import parsers and option checking of every backend."""

from __future__ import annotations

import asyncio
import gc
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from passlib.hash import sha512_crypt

from mailkeep.directory.apppasswords import (
    TOKEN_LENGTH,
    AppPassword,
    LastUsedCoalescer,
    Match,
    new_app_password,
    verify_login,
)
from mailkeep.directory.base import Account, DirectoryError, DirectoryUnavailable
from mailkeep.directory.cache import CredentialsCache
from mailkeep.directory.file import parse_users
from mailkeep.directory.front import DirectoryFront, split_front_options
from mailkeep.directory.importing import parse_dovecot_passwd, parse_users_csv
from mailkeep.directory.ldap import LdapSettings
from mailkeep.directory.ldap.connection import parse_uris, tls_context
from mailkeep.directory.ldap.filters import SCHEMAS, check_template, escape_value, render
from mailkeep.directory.passwords import hash_password
from mailkeep.directory.sql import open_driver, queries
from mailkeep.directory.sql.schema import parameters, to_numbered

# -- RFC 4515 escaping ----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "escaped"), [
    ("*", r"\2a"), ("(", r"\28"), (")", r"\29"), ("\\", r"\5c"), ("\x00", r"\00"),
    ("*)(uid=*", r"\2a\29\28uid=\2a"), ("alice", "alice"), ("zoë@example.test", "zoë@example.test"),
    ("a\\2a", r"a\5c2a"),
])
def test_escape_value_per_rfc4515(raw: str, escaped: str) -> None:
    assert escape_value(raw) == escaped


@given(st.text(max_size=40))
def test_escaped_values_have_no_filter_syntax_left(value: str) -> None:
    out = escape_value(value)
    assert "*" not in out and "(" not in out and ")" not in out and "\x00" not in out
    # every backslash starts a two-hex-digit escape
    assert re.fullmatch(r"(?:[^\\]|\\[0-9a-f]{2})*", out, re.DOTALL)


def test_render_fills_once() -> None:
    template = "(&(uid={login})(member={dn}))"
    assert render(template, {"login": "{dn}", "dn": "x*"}) == r"(&(uid={dn})(member=x\2a))"


@pytest.mark.parametrize(("template", "problem"), [
    ("uid={login}", "written in parentheses"), ("((uid={login})", "unbalanced"),
    ("(a=1))((uid={login})", "unbalanced"), ("(uid={user})", "unknown placeholder {user}"),
    ("(uid=alice)", "must contain {login}"),
])
def test_filter_templates_are_checked(template: str, problem: str) -> None:
    found = check_template(template, "login", "user_filter")
    assert found is not None and problem in found


def test_default_filters_are_valid() -> None:
    for schema in SCHEMAS.values():
        assert check_template(schema.user_filter, "login", "user_filter") is None
        if schema.group_filter:
            assert check_template(schema.group_filter, "", "group_filter") is None


# -- LDAP options ----------------------------------------------------------------------------------


def _ldap(tmp_path: Path, **options: object) -> LdapSettings:
    (tmp_path / "pw").write_text("secret\n")
    base: dict[str, object] = {"uri": ["ldaps://ldap.example.test"], "base_dn": "dc=example",
                               "bind_dn": "cn=svc,dc=example", "bind_password_file": "pw"}
    return LdapSettings({**base, **options}, tmp_path)


def test_ldap_settings_defaults(tmp_path: Path) -> None:
    s = _ldap(tmp_path)
    assert s.bind_password == "secret"
    assert s.user_filter == SCHEMAS["openldap"].user_filter
    ad = _ldap(tmp_path, schema="ad")
    assert ad.name_attribute == "sAMAccountName" and ad.member_of_attribute == "memberOf"
    assert "proxyAddresses=smtp:{login}" in ad.user_filter
    assert "1.2.840.113556.1.4.803:=2" in ad.user_filter  # disabled accounts never match


@pytest.mark.parametrize(("options", "problem"), [
    ({"uri": ["ldapi:///run/slapd.sock"]}, "directory.uri[0]"),
    ({"uri": ["http://ldap.example.test"]}, "directory.uri[0]"),
    ({"uri": ["ldaps://ldap.example.test:99999"]}, "bad port"),
    ({"uri": []}, "directory.uri: required"),
    ({"base_dn": ""}, "directory.base_dn: required"),
    ({"bind_password_file": ""}, "bind_password_file: required"),
    ({"bind_password_file": "missing"}, "bind_password_file"),
    ({"colour": "blue"}, "directory.colour: unknown key"),
    ({"user_filter": "(uid=*)"}, "must contain {login}"),
    ({"schema": "novell"}, "directory.schema"),
    ({"timeout": 0}, "directory.timeout"),
])
def test_ldap_settings_problems(tmp_path: Path, options: dict[str, object],
                                problem: str) -> None:
    with pytest.raises(DirectoryError, match=re.escape(problem)):
        parse_uris(_ldap(tmp_path, **options).uris)


def test_ldap_tls_context_verifies_names_and_chains() -> None:
    ctx = tls_context(None)
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    with pytest.raises(DirectoryError, match="ca_file"):
        tls_context("/nonexistent/ca.pem")


# -- the credentials cache -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_keys_are_keyed_hashes() -> None:
    cache = CredentialsCache()
    other = CredentialsCache()
    key = cache.key("imap", "alice", "hunter2-password")
    assert len(key) == 32 and b"hunter2" not in key
    assert key != other.key("imap", "alice", "hunter2-password")  # a per-process secret
    assert key != cache.key("pop3", "alice", "hunter2-password")
    assert cache.key("imap", "a|b", "c") != cache.key("imap", "a", "b|c")


def test_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache = CredentialsCache(ttl=60, max_entries=2, clock=clock)
    alice = Account("alice", ())
    cache.put(b"k1", alice)
    assert cache.get(b"k1") is alice
    clock.now += 60
    assert cache.get(b"k1") is None
    for k in (b"a", b"b", b"c"):
        cache.put(k, alice)
    assert len(cache) == 2 and cache.get(b"a") is None
    off = CredentialsCache(ttl=0)
    off.put(b"x", alice)
    assert len(off) == 0


class CountingBackend:
    """A directory answering from a dict, counting the verifications it was asked for."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.generation = 0
        self.passwords = {"alice": "alice-pw-1"}

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise DirectoryUnavailable("down")
        if self.passwords.get(login) == password:
            return Account(login, (f"{login}@example.test",), groups=("helpdesk",))
        return None

    async def lookup(self, address: str) -> Account | None:
        return None

    async def close(self) -> None:
        return None

    async def current_generation(self) -> int:
        return self.generation


async def test_front_caches_successes_only_and_shares_concurrent_work() -> None:
    backend = CountingBackend()
    front = DirectoryFront(backend, split_front_options({"cache_ttl": 60})[0])
    for _ in range(3):
        assert await front.authenticate("alice", "wrong", "imap") is None
    assert backend.calls == 3  # failures are verified every time
    results = await asyncio.gather(*[front.authenticate("alice", "alice-pw-1", "imap")
                                     for _ in range(5)])
    assert all(r is not None for r in results)
    assert backend.calls == 4  # five logins at once, one verification
    assert await front.authenticate("alice", "alice-pw-1", "imap") is not None
    assert backend.calls == 4  # from the cache
    backend.generation += 1  # the users changed: forget everything
    assert await front.authenticate("alice", "alice-pw-1", "imap") is not None
    assert backend.calls == 5
    backend.down = True
    with pytest.raises(DirectoryUnavailable):
        await front.authenticate("alice", "other-pw", "imap")
    # Refused before the backend: empty passwords, empty or over-long logins.
    calls = backend.calls
    for login, password in (("alice", ""), ("", "x"), ("a" * 300, "x")):
        assert await front.authenticate(login, password, "imap") is None
    assert backend.calls == calls
    await front.close()
    gc.collect()


async def test_front_send_as_groups() -> None:
    options, rest = split_front_options({"send_as_groups": ["HelpDesk"], "path": "x"})
    assert rest == {"path": "x"} and options.send_as_groups == ("helpdesk",)
    front = DirectoryFront(CountingBackend(), options)
    account = await front.authenticate("alice", "alice-pw-1", "imap")
    assert account is not None and account.send_as_others


@pytest.mark.parametrize(("options", "problem"), [
    ({"cache_ttl": -1}, "cache_ttl"), ({"cache_ttl": 86400}, "cache_ttl"),
    ({"cache_ttl": True}, "cache_ttl"), ({"cache_size": 0}, "cache_size"),
    ({"send_as_groups": "helpdesk"}, "send_as_groups"),
])
def test_front_options_problems(options: dict[str, object], problem: str) -> None:
    with pytest.raises(DirectoryError, match=problem):
        split_front_options(options)


# -- app passwords ---------------------------------------------------------------------------------


def test_new_app_passwords_are_random_tokens() -> None:
    secrets_ = {new_app_password()[0] for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){5}", secret)
        assert len(secret.replace("-", "")) == TOKEN_LENGTH
    secret, stored = new_app_password()
    assert stored.startswith("{SSHA256}") and secret not in stored


def test_verify_login_main_and_app_passwords() -> None:
    main = hash_password("main-pw-1")
    phone_secret, phone = new_app_password()
    imported = sha512_crypt.using(rounds=5000).hash("old-app-pw")
    apps = (AppPassword("phone", phone, ("imap", "submission")),
            AppPassword("legacy", "{SHA512-CRYPT}" + imported, ("pop3",)))
    assert verify_login("main-pw-1", main, apps, "relay") == Match(None)
    assert verify_login(phone_secret, main, apps, "imap") == Match("phone")
    assert verify_login(phone_secret, main, apps, "pop3") is None
    assert verify_login("old-app-pw", main, apps, "pop3") == Match("legacy")
    assert verify_login("old-app-pw", main, apps, "imap") is None
    assert verify_login(phone_secret, None, apps, "imap") is None  # no account, no match


def test_last_used_is_coalesced() -> None:
    c = LastUsedCoalescer(interval=60)
    assert c.due("alice", "phone", now=0)
    assert not c.due("alice", "phone", now=59)
    assert c.due("alice", "laptop", now=59)
    assert c.due("alice", "phone", now=60)


def test_users_file_groups_and_app_passwords() -> None:
    _, stored = new_app_password()
    main = hash_password("x-password")
    records = parse_users({"users": {"alice": {
        "password": main, "groups": ["Staff", "staff", "HelpDesk"],
        "app_passwords": {"phone": {"hash": stored, "services": ["imap", "imap"]}}}}}, "u")
    alice = records["alice"]
    assert alice.account.groups == ("staff", "helpdesk")
    assert alice.app_passwords[0].services == ("imap",)
    with pytest.raises(DirectoryError) as info:
        parse_users({"users": {"bob": {
            "password": main, "groups": "staff",
            "app_passwords": {"Bad Label": {"hash": stored, "services": ["imap"]},
                              "fax": {"hash": stored, "services": ["fax"]},
                              "plain": {"hash": "{PLAIN}x", "services": ["imap"]},
                              "odd": {"hash": stored, "services": ["imap"], "note": 1}}}}},
            "u")
    for problem in ("users.bob.groups", "app_passwords.Bad Label: label",
                    "app_passwords.fax.services", "app_passwords.plain.hash",
                    "app_passwords.odd.note: unknown key"):
        assert problem in str(info.value), problem


# -- SQL ---------------------------------------------------------------------------------------


def test_named_parameters_become_numbered() -> None:
    query = ("SELECT name::text, ':notaparam' FROM users WHERE name = :login OR "
             "alias = :login AND x = :other")
    sql, names = to_numbered(query)
    assert sql == ("SELECT name::text, ':notaparam' FROM users WHERE name = $1 OR "
                   "alias = $1 AND x = $2")
    assert names == ["login", "other"]
    assert parameters(query) == ["login", "login", "other"]


@pytest.mark.parametrize(("options", "problem"), [
    ({}, "give either database"),
    ({"database": "a.sqlite3", "dsn": "postgresql://x/y"}, "give either database"),
    ({"dsn": "mysql://x/y"}, "directory.dsn"),
    ({"database": "a.sqlite3", "password_file": "x"}, "only for dsn"),
    ({"database": "missing.sqlite3"}, "create-schema"),
    ({"database": "a.sqlite3", "timeout": -1}, "directory.timeout"),
    ({"database": "a.sqlite3", "colour": 1}, "directory.colour: unknown key"),
    ({"dsn": "postgresql://x/y", "password_file": "missing"}, "password_file"),
])
def test_sql_options_problems(tmp_path: Path, options: dict[str, object], problem: str) -> None:
    (tmp_path / "a.sqlite3").touch()
    with pytest.raises(DirectoryError, match=problem):
        open_driver(options, tmp_path)


def test_sql_queries_can_be_replaced_but_not_emptied() -> None:
    q = queries({"groups_query": "", "login_query": "SELECT n, p FROM t WHERE n = :login"})
    assert q["groups_query"] == "" and q["login_query"].endswith(":login")
    with pytest.raises(DirectoryError, match="login_query: required"):
        queries({"login_query": " "})


# -- imports -----------------------------------------------------------------------------------


def _local(domain: str) -> bool:
    return domain == "example.test"


def test_dovecot_passwd_file() -> None:
    sha = sha512_crypt.using(rounds=5000).hash("pw")
    text = "\n".join([
        "# comment", "",
        f"alice@example.test:{{SHA512-CRYPT}}{sha}:1000:1000::/home/alice::userdb_x=y",
        "bob:{PLAIN}bob-secret",
        "carol@example.test:{MD5}abc",
        "alice@example.test:{PLAIN}again",
        "nocolon",
        "dave@other.test:{PLAIN}x",
    ])
    result = parse_dovecot_passwd(text, default_domain="example.test", is_local=_local)
    names = {e.account.name: e for e in result.entries}
    assert set(names) == {"alice", "bob"}
    assert names["alice"].password_hash == "{SHA512-CRYPT}" + sha
    assert names["bob"].account.addresses == ("bob@example.test",)
    assert names["bob"].password_hash.startswith("$argon2id$")
    joined = "\n".join(result.problems)
    for where in ("line 5", "line 6", "line 7", "line 8"):
        assert where in joined, where
    assert "bob-secret" not in joined and sha not in joined
    full = parse_dovecot_passwd("alice@example.test:{PLAIN}x", default_domain="example.test",
                                is_local=_local, names="full")
    assert full.entries[0].account.name == "alice@example.test"


def test_users_csv() -> None:
    text = ("Name,Password,Addresses,Groups,send_as_others\n"
            "alice,{PLAIN}alice-secret,alice@example.test;a@example.test,staff helpdesk,true\n"
            "bob,{PLAIN}bob-secret,,,\n"
            "Bad Name,{PLAIN}x,,,\n"
            "carol,{PLAIN}c,carol@elsewhere.test,,maybe\n")
    result = parse_users_csv(text, default_domain="example.test", is_local=_local)
    alice = next(e for e in result.entries if e.account.name == "alice")
    assert alice.account.addresses == ("alice@example.test", "a@example.test")
    assert alice.account.groups == ("staff", "helpdesk") and alice.account.send_as_others
    bob = next(e for e in result.entries if e.account.name == "bob")
    assert bob.account.addresses == ("bob@example.test",)
    assert len(result.problems) == 3
    assert parse_users_csv("user,pw\n", default_domain="example.test",
                           is_local=_local).problems[0].startswith("line 1")
