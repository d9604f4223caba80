"""The LDAP / Active Directory backend.

    [directory]
    backend = "ldap"
    uri = ["ldaps://ldap1.example.test", "ldap://ldap2.example.test"]  # ldap:// = StartTLS
    base_dn = "ou=people,dc=example,dc=test"
    bind_dn = "cn=mailkeep,ou=services,dc=example,dc=test"   # the service account
    bind_password_file = "ldap.secret"                      # mode 0600
    # schema = "openldap"            # or "ad": the defaults of the keys below
    # ca_file = "ldap-ca.pem"        # default: the system's CAs
    # user_filter = "(&(objectClass=inetOrgPerson)(|(uid={login})(mail={login})))"
    # name_attribute = "uid"         # the account (and Maildir folder) name
    # mail_attributes = ["mail"]     # AD: ["mail", "proxyAddresses"] (smtp: values)
    # group_filter = "(&(objectClass=groupOfNames)(member={dn}))"   # "" = none
    # group_base_dn = "ou=groups,dc=example,dc=test"                # default: base_dn
    # member_of_attribute = "memberOf"   # groups from the user entry instead (AD, overlay)
    # timeout = 5.0                  # seconds per connection and per operation
    # pool_size = 16                 # threads, and connections of each kind
    # app_passwords = "app-passwords.sqlite3"   # local app passwords ("" = none)

A login is found with the service account (user_filter with the login escaped per RFC
4515), then checked by binding as the found entry's DN with the given password: mailkeep
never reads password attributes. App passwords are checked first, locally, so a phone
using one never causes a failed bind (Active Directory counts failed binds towards its
account lockout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.dn import parse_dn

from mailkeep.directory.admin import AdminError, UserEntry
from mailkeep.directory.apppasswords import (
    AppPassword,
    LastUsedCoalescer,
    matching_app_passwords,
)
from mailkeep.directory.base import Account, DirectoryError, DirectoryUnavailable
from mailkeep.directory.ldap.appstore import AppPasswordStore
from mailkeep.directory.ldap.connection import (
    INVALID_CREDENTIALS,
    LdapPool,
    check_result,
    tls_context,
)
from mailkeep.directory.ldap.filters import SCHEMAS, check_template, render
from mailkeep.directory.names import clean_address, clean_groups, valid_account_name

log = logging.getLogger("mailkeep.directory")

DEFAULT_TIMEOUT = 5.0
# Threads, and connections of each kind (search, bind): LDAP work waits on the network, not
# on a core, so more threads than cores is right. Logins/s at most pool_size / bind latency
# (a 200 ms server: 16 / 0.2 s = 80 logins/s before the credentials cache).
DEFAULT_POOL_SIZE = 16
# Group memberships read per account at most (a search's size limit).
MAX_GROUPS = 1000
_KEYS = {"uri", "base_dn", "bind_dn", "bind_password_file", "schema", "ca_file",
         "user_filter", "name_attribute", "mail_attributes", "group_filter", "group_base_dn",
         "group_name_attribute", "member_of_attribute", "timeout", "pool_size",
         "app_passwords"}


def _str(options: Mapping[str, object], key: str, default: str | None) -> str | None:
    value = options.get(key, default)
    if value is not None and not isinstance(value, str):
        raise DirectoryError(f"directory.{key}: expected a string")
    return value


class LdapSettings:
    """The `[directory]` options of the LDAP backend, checked (every problem at once)."""

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        problems = [f"directory.{k}: unknown key for backend \"ldap\"" for k in
                    sorted(set(options) - _KEYS)]
        schema = options.get("schema", "openldap")
        if schema not in SCHEMAS:
            raise DirectoryError(f"directory.schema: {schema!r} is not one of "
                                 f"{', '.join(SCHEMAS)}")
        defaults = SCHEMAS[str(schema)]
        uris = options.get("uri")
        if isinstance(uris, str):
            uris = [uris]
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            problems.append('directory.uri: required: e.g. ["ldaps://ldap.example.test"]')
            uris = []
        self.uris: list[str] = list(uris)
        self.base_dn = _str(options, "base_dn", None) or ""
        if not self.base_dn:
            problems.append('directory.base_dn: required, e.g. "ou=people,dc=example,dc=test"')
        self.bind_dn = _str(options, "bind_dn", None)
        self.bind_password: str | None = None
        pw_file = _str(options, "bind_password_file", None)
        if self.bind_dn and not pw_file:
            problems.append("directory.bind_password_file: required with bind_dn")
        elif pw_file:
            try:
                self.bind_password = (base_dir / pw_file).read_text(encoding="utf-8").rstrip(
                    "\r\n")
            except OSError as exc:
                problems.append(f"directory.bind_password_file: {base_dir / pw_file}: "
                                f"{exc.strerror or exc}")
        ca_file = _str(options, "ca_file", None)
        self.ca_file = str(base_dir / ca_file) if ca_file else None
        self.user_filter = _str(options, "user_filter", defaults.user_filter) or ""
        self.group_filter = _str(options, "group_filter", defaults.group_filter) or ""
        for key, template, required in (("user_filter", self.user_filter, "login"),
                                        ("group_filter", self.group_filter, "")):
            if template:
                problem = check_template(template, required, key)
                if problem:
                    problems.append(problem)
        self.name_attribute = _str(options, "name_attribute", defaults.name_attribute) or ""
        mail = options.get("mail_attributes", list(defaults.mail_attributes))
        if not isinstance(mail, list) or not all(isinstance(m, str) for m in mail):
            problems.append('directory.mail_attributes: expected a list, e.g. ["mail"]')
            mail = []
        self.mail_attributes: tuple[str, ...] = tuple(mail)
        self.group_base_dn = _str(options, "group_base_dn", None) or self.base_dn
        self.group_name_attribute = _str(options, "group_name_attribute", "cn") or "cn"
        self.member_of_attribute = _str(options, "member_of_attribute",
                                        defaults.member_of_attribute) or ""
        numbers: dict[str, float] = {}
        for key, default in (("timeout", DEFAULT_TIMEOUT), ("pool_size", DEFAULT_POOL_SIZE)):
            value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"directory.{key}: expected a positive number")
                value = default
            numbers[key] = float(value)
        self.timeout = numbers["timeout"]
        self.pool_size = max(1, int(numbers["pool_size"]))
        store = _str(options, "app_passwords", "app-passwords.sqlite3")
        self.app_passwords = base_dir / store if store else None
        if problems:
            raise DirectoryError("; ".join(problems))


def _first(attrs: Mapping[str, Any], name: str) -> str | None:
    value = attrs.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


def _values(attrs: Mapping[str, Any], name: str) -> list[str]:
    value = attrs.get(name)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _group_name(dn: str) -> str | None:
    try:
        return str(parse_dn(dn)[0][1]).replace("\\", "")
    except Exception:  # a DN we cannot parse names no group we can use
        return None


class _Entry:
    __slots__ = ("account", "dn")

    def __init__(self, dn: str, account: Account) -> None:
        self.dn = dn
        self.account = account


class LdapDirectory:
    """UserDirectory over LDAP (OpenLDAP, Active Directory...)."""

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        self.settings = s = LdapSettings(options, base_dir)
        self.pool = LdapPool(s.uris, context=tls_context(s.ca_file), timeout=s.timeout,
                             size=s.pool_size, bind_dn=s.bind_dn, bind_password=s.bind_password)
        self.apps = AppPasswordStore(s.app_passwords)
        # One login runs its search and its bind in one thread, one after the other: as many
        # threads as connections of each kind, so no connection is opened only to be dropped.
        self._threads = ThreadPoolExecutor(s.pool_size, thread_name_prefix="mailkeep-ldap")
        self._coalescer = LastUsedCoalescer()
        # Unknown logins bind as this DN (which does not exist) so that they cost a round
        # trip like a wrong password does.
        self._nobody_dn = f"cn=mailkeep-no-such-user,{s.base_dn}"

    @classmethod
    def admin(cls, options: Mapping[str, object], base_dir: Path) -> LdapAdmin:
        return LdapAdmin(options, base_dir)

    # -- blocking parts (thread pool) -------------------------------------------------------

    def _attributes(self) -> list[str]:
        s = self.settings
        wanted = [s.name_attribute, *s.mail_attributes]
        if s.member_of_attribute:
            wanted.append(s.member_of_attribute)
        return wanted

    def _find(self, login: str) -> _Entry | None:
        """The one entry a login names (None: none, several, or unusable)."""
        s = self.settings
        try:
            login.encode("utf-8")
        except UnicodeEncodeError:
            return None
        query = render(s.user_filter, {"login": login, "name": login, "dn": ""})

        def search(conn: ldap3.Connection) -> list[dict[str, Any]]:
            conn.search(s.base_dn, query, ldap3.SUBTREE, attributes=self._attributes(),
                        size_limit=2, time_limit=max(1, int(s.timeout)))
            check_result(conn)
            return [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]

        found = self.pool.run("search", search)
        if len(found) != 1:
            if len(found) > 1:
                log.error("ldap: login %r matches several entries: refused (narrow "
                          "user_filter)", login[:64])
            return None
        entry = found[0]
        attrs = entry.get("attributes") or {}
        raw_name = _first(attrs, s.name_attribute)
        name = raw_name.strip().lower() if raw_name else ""
        if not valid_account_name(name):
            log.error("ldap: %s: %s %r is not usable as an account (Maildir) name",
                      entry.get("dn"), s.name_attribute, (raw_name or "")[:64])
            return None
        addresses: list[str] = []
        for attr in s.mail_attributes:
            for value in _values(attrs, attr):
                text = value
                if attr.lower() == "proxyaddresses":
                    # Active Directory: "SMTP:primary@x", "smtp:alias@x", "X400:..." etc.
                    if not value.lower().startswith("smtp:"):
                        continue
                    text = value[5:]
                addr = clean_address(text)
                if addr and addr not in addresses:
                    addresses.append(addr)
        groups: list[str] = []
        if s.member_of_attribute:
            groups += [g for g in map(_group_name, _values(attrs, s.member_of_attribute)) if g]
        return _Entry(str(entry["dn"]), Account(name, tuple(addresses), False,
                                                clean_groups(groups)))

    def _groups(self, entry: _Entry) -> tuple[str, ...]:
        s = self.settings
        if not s.group_filter:
            return entry.account.groups
        query = render(s.group_filter, {"dn": entry.dn, "name": entry.account.name,
                                        "login": entry.account.name})

        def search(conn: ldap3.Connection) -> list[str]:
            conn.search(s.group_base_dn, query, ldap3.SUBTREE,
                        attributes=[s.group_name_attribute], size_limit=MAX_GROUPS,
                        time_limit=max(1, int(s.timeout)))
            check_result(conn)
            names: list[str] = []
            for r in conn.response or []:
                if r.get("type") == "searchResEntry":
                    names += _values(r.get("attributes") or {}, s.group_name_attribute)[:1]
            return names

        return clean_groups([*entry.account.groups, *self.pool.run("search", search)])

    def _bind(self, dn: str, password: str) -> bool:
        def bind(conn: ldap3.Connection) -> bool:
            conn.authentication = ldap3.SIMPLE
            conn.user, conn.password = dn, password
            ok = bool(conn.bind(read_server_info=False))
            if not ok:
                check_result(conn)
                code = (conn.result or {}).get("result")
                if code != INVALID_CREDENTIALS:
                    log.warning("ldap: bind as %s refused: %s", dn,
                                (conn.result or {}).get("description"))
            return ok

        return self.pool.run("bind", bind)

    def _authenticate(self, login: str, password: str, service: str) -> Account | None:
        if not password:
            return None  # RFC 4513 §5.1.2: an empty password would be an anonymous bind
        entry = self._find(login)
        if entry is None:
            self._bind(self._nobody_dn, password)
            return None
        matched = matching_app_passwords(password, self.apps.for_user(entry.account.name))
        here = [app for app in matched if service in app.services]
        if here:
            if self._coalescer.due(entry.account.name, here[0].label):
                self.apps.note_used(entry.account.name, here[0].label)
        elif matched:
            return None  # an app password at the wrong door: no bind (no lockout count)
        elif not self._bind(entry.dn, password):
            return None
        return Account(entry.account.name, entry.account.addresses, False,
                       self._groups(entry))

    def _lookup(self, address: str) -> Account | None:
        addr = clean_address(address)
        if addr is None:
            return None
        entry = self._find(addr)
        if entry is None or addr not in entry.account.addresses:
            return None
        return Account(entry.account.name, entry.account.addresses, False,
                       self._groups(entry))

    def _check(self) -> None:
        """A base-scope search of base_dn on a search connection (opened with the service
        account's bind when there is one): a server that answers is reachable, whatever
        the answer (a missing base_dn is a configuration matter, logged at login)."""
        s = self.settings

        def probe(conn: ldap3.Connection) -> None:
            conn.search(s.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"],
                        size_limit=1, time_limit=max(1, int(s.timeout)))
            check_result(conn)

        self.pool.run("search", probe)

    # -- the UserDirectory interface ------------------------------------------------------

    async def check(self) -> None:
        """The directory server answers (CheckedDirectory)."""
        await self._run(self._check)

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        # Each server gets `timeout` to connect and `timeout` to answer; failing over to
        # the next costs as much again. Beyond that the client is told to try later.
        deadline = self.settings.timeout * (2 * len(self.pool.servers) + 1)
        try:
            async with asyncio.timeout(deadline):
                return await loop.run_in_executor(self._threads, fn, *args)
        except TimeoutError:
            raise DirectoryUnavailable("ldap: timed out") from None

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        result: Account | None = await self._run(self._authenticate, login, password, service)
        return result

    async def lookup(self, address: str) -> Account | None:
        result: Account | None = await self._run(self._lookup, address)
        return result

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.pool.close)
        self.apps.close()


class LdapAdmin:
    """Accounts live in LDAP; mailkeep manages their app passwords only."""

    manages_accounts = False

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        self.options = options
        self.base_dir = base_dir
        self.settings = LdapSettings(options, base_dir)
        self.store = AppPasswordStore(self.settings.app_passwords)

    def _refuse(self) -> AdminError:
        return AdminError("accounts live in LDAP: add, change and remove them there "
                          "(mailkeep manages app passwords only)")

    async def list_users(self) -> list[UserEntry]:
        raise self._refuse()

    async def get_user(self, name: str) -> UserEntry | None:
        raise self._refuse()

    async def add_users(self, entries: Sequence[UserEntry]) -> None:
        raise self._refuse()

    async def set_password(self, name: str, password_hash: str) -> None:
        raise self._refuse()

    async def set_groups(self, name: str, groups: tuple[str, ...]) -> None:
        raise self._refuse()

    async def delete_user(self, name: str) -> None:
        raise self._refuse()

    async def _require(self, name: str) -> None:
        directory = LdapDirectory(self.options, self.base_dir)
        try:
            entry = await directory._run(directory._find, name)
        except DirectoryUnavailable as exc:
            raise AdminError(f"cannot check {name} in LDAP: {exc}") from None
        finally:
            await directory.close()
        if entry is None or entry.account.name != name:
            raise AdminError(f"no account {name} in LDAP")

    async def add_app_password(self, name: str, app: AppPassword) -> None:
        await self._require(name)
        if self.store.path is None:
            raise AdminError('app passwords are off: set directory.app_passwords = '
                             '"app-passwords.sqlite3"')
        await asyncio.to_thread(self.store.add, name, app)

    async def list_app_passwords(self, name: str) -> list[AppPassword]:
        return list(await asyncio.to_thread(self.store.for_user, name))

    async def revoke_app_password(self, name: str, label: str) -> bool:
        return await asyncio.to_thread(self.store.revoke, name, label)

    async def close(self) -> None:
        self.store.close()
