"""LDAP search filters: escaping (RFC 4515) and the templates an administrator configures.

A login is whatever a client typed, so it is escaped before it goes into a filter: `*`
would turn an equality match into a wildcard ("alice*" logging in as the first alice...),
`(` and `)` would add clauses ("*)(uid=*" is the classic injection), `\\` would start an
escape and NUL would end the string early. RFC 4515 §3: those five are written as `\\2a`,
`\\28`, `\\29`, `\\5c`, `\\00`; UTF-8 passes as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars

PLACEHOLDER = re.compile(r"\{(login|name|dn)\}")


def escape_value(value: str) -> str:
    """RFC 4515 §3 escaping of an assertion value (ldap3's escape_filter_chars)."""
    escaped: str = escape_filter_chars(value)
    return escaped


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill {login}, {name}, {dn} with escaped values, in one pass (a value that contains
    "{dn}" is never filled again)."""
    return PLACEHOLDER.sub(lambda m: escape_value(values[m.group(1)]), template)


def check_template(template: str, required: str, key: str) -> str | None:
    """A problem with a configured filter template, or None."""
    if not (template.startswith("(") and template.endswith(")")):
        return f"directory.{key}: a filter is written in parentheses, e.g. (uid={{login}})"
    depth = 0
    for ch in template:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return f"directory.{key}: unbalanced parentheses"
    if depth:
        return f"directory.{key}: unbalanced parentheses"
    unknown = set(re.findall(r"\{(\w*)\}", template)) - {"login", "name", "dn"}
    if unknown:
        return f"directory.{key}: unknown placeholder {{{sorted(unknown)[0]}}}"
    if required and f"{{{required}}}" not in template:
        return f"directory.{key}: must contain {{{required}}}"
    return None


@dataclass(frozen=True, slots=True)
class SchemaDefaults:
    user_filter: str
    name_attribute: str
    mail_attributes: tuple[str, ...]
    group_filter: str
    member_of_attribute: str


SCHEMAS = {
    # OpenLDAP with inetOrgPerson entries: log in as uid or as any mail address. Groups are
    # found by searching (groupOfNames, groupOfUniqueNames, posixGroup), which needs no
    # overlay; with the memberof overlay, set member_of_attribute = "memberOf" instead.
    "openldap": SchemaDefaults(
        user_filter="(&(objectClass=inetOrgPerson)(|(uid={login})(mail={login})))",
        name_attribute="uid",
        mail_attributes=("mail",),
        group_filter="(|(&(objectClass=groupOfNames)(member={dn}))"
                     "(&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))"
                     "(&(objectClass=posixGroup)(memberUid={name})))",
        member_of_attribute="",
    ),
    # Active Directory: sAMAccountName, userPrincipalName, mail or any smtp: proxy address;
    # disabled accounts (userAccountControl bit 2, LDAP_MATCHING_RULE_BIT_AND) never match.
    # Groups from memberOf (direct memberships).
    "ad": SchemaDefaults(
        user_filter="(&(objectCategory=person)(objectClass=user)"
                    "(!(userAccountControl:1.2.840.113556.1.4.803:=2))"
                    "(|(sAMAccountName={login})(userPrincipalName={login})(mail={login})"
                    "(proxyAddresses=smtp:{login})))",
        name_attribute="sAMAccountName",
        mail_attributes=("mail", "proxyAddresses"),
        group_filter="",
        member_of_attribute="memberOf",
    ),
}
