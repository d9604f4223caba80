"""The default SQL schema and the queries that read it; every query can be replaced.

The default schema works unchanged on SQLite and PostgreSQL (`mailkeep user create-schema`
creates it). To serve an existing user table, replace the queries in `[directory]`; the
queries name their parameters `:login`, `:name`, `:address`, `:label`, `:now` (turned into
`$1`, `$2`... for PostgreSQL), and must return the columns in the order documented below.
"""

from __future__ import annotations

import re

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,              -- login and Maildir folder name, lower case
    password TEXT NOT NULL,             -- argon2id, or {SHA512-CRYPT}$6$... from Dovecot
    send_as_others BOOLEAN NOT NULL DEFAULT FALSE
)""",
    """CREATE TABLE IF NOT EXISTS addresses (
    address TEXT PRIMARY KEY,           -- lower case
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE
)""",
    "CREATE INDEX IF NOT EXISTS addresses_user_name ON addresses (user_name)",
    """CREATE TABLE IF NOT EXISTS user_groups (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    group_name TEXT NOT NULL,           -- lower case
    PRIMARY KEY (user_name, group_name)
)""",
    """CREATE TABLE IF NOT EXISTS app_passwords (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    label TEXT NOT NULL,
    password TEXT NOT NULL,             -- {SSHA256}... (generated) or any main-password scheme
    services TEXT NOT NULL,             -- comma-separated: imap,pop3,submission,smtp,relay
    created BIGINT NOT NULL,            -- Unix time
    last_used BIGINT,                   -- Unix time, updated at most once a minute
    PRIMARY KEY (user_name, label)
)""",
)

# The LDAP backend's local store of app passwords: the same table, without the account table
# (accounts live in LDAP).
APP_PASSWORD_STORE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS app_passwords (
    user_name TEXT NOT NULL,
    label TEXT NOT NULL,
    password TEXT NOT NULL,
    services TEXT NOT NULL,
    created BIGINT NOT NULL,
    last_used BIGINT,
    PRIMARY KEY (user_name, label)
)""",
)

# The queries, by option name: (default, what it must return).
QUERIES: dict[str, tuple[str, str]] = {
    "login_query": (
        "SELECT name, password FROM users WHERE name = :login "
        "UNION ALL SELECT u.name, u.password FROM users u "
        "JOIN addresses a ON a.user_name = u.name WHERE a.address = :login",
        "(name, password hash) of the account a login (name or address) is for"),
    "account_query": (
        "SELECT name, send_as_others FROM users WHERE name = :name",
        "(name, send_as_others) of an account"),
    "address_query": (
        "SELECT user_name FROM addresses WHERE address = :address",
        "(name) of the account receiving mail for an address"),
    "addresses_query": (
        "SELECT address FROM addresses WHERE user_name = :name ORDER BY address",
        "(address) rows: every address of an account"),
    "groups_query": (
        "SELECT group_name FROM user_groups WHERE user_name = :name",
        "(group) rows: the account's groups (empty string: no groups)"),
    "app_passwords_query": (
        "SELECT label, password, services FROM app_passwords WHERE user_name = :name",
        "(label, hash, comma-separated services) rows (empty string: no app passwords)"),
    "app_password_used_query": (
        "UPDATE app_passwords SET last_used = :now WHERE user_name = :name AND label = :label",
        "records an app password's use (empty string: not recorded)"),
}

# :name parameters, not PostgreSQL casts (::text) nor inside quoted strings.
_PARAM = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![:\w]):([A-Za-z_]\w*)")


def parameters(query: str) -> list[str]:
    """The parameter names a query uses, in order of appearance."""
    return [m.group(1) for m in _PARAM.finditer(query) if m.group(1)]


def to_numbered(query: str) -> tuple[str, list[str]]:
    """`:name` parameters as PostgreSQL's `$1`, `$2`...; the names in number order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if not m.group(1):
            return m.group(0)
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return _PARAM.sub(number, query), names
