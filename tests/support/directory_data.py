"""The accounts every directory backend is loaded with for the contract tests.

The same people, addresses, groups and passwords in a users file, an SQLite database, a
PostgreSQL database and an OpenLDAP server, each stored the way that backend stores them.
"""

from __future__ import annotations

from dataclasses import dataclass

from passlib.hash import ldap_salted_sha1, sha512_crypt

from mailkeep.directory.admin import UserEntry
from mailkeep.directory.base import Account
from mailkeep.directory.passwords import hash_password

DOMAIN = "example.test"
BASE_DN = "dc=example,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
SERVICE_DN = f"cn=mailkeep,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-account-pw"


@dataclass(frozen=True)
class Person:
    name: str
    password: str
    addresses: tuple[str, ...]
    groups: tuple[str, ...]
    # How the password is stored in the users file and SQL: "argon2" (new) or "sha512"
    # (a Dovecot {SHA512-CRYPT} hash, as migrated).
    scheme: str = "argon2"


PEOPLE = (
    Person("alice", "alice-pw-1", ("alice@example.test", "a.smith@example.test"),
           ("staff", "helpdesk")),
    Person("bob", "bob-pw-2", ("bob@example.test",), ("staff",)),
    Person("carol", "carol-pw-3", ("carol@example.test",), (), scheme="sha512"),
)
BY_NAME = {p.name: p for p in PEOPLE}

_HASHES: dict[str, str] = {}


def stored_hash(person: Person) -> str:
    if person.name not in _HASHES:
        if person.scheme == "sha512":
            _HASHES[person.name] = "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(
                person.password)
        else:
            _HASHES[person.name] = hash_password(person.password)
    return _HASHES[person.name]


def entries() -> list[UserEntry]:
    return [UserEntry(Account(p.name, p.addresses, False, p.groups), stored_hash(p))
            for p in PEOPLE]


def bench_people(count: int) -> list[Person]:
    """Extra accounts for bench/directory.py: one per client, so that concurrent logins are
    distinct (identical concurrent logins share one verification in the front)."""
    return [Person(f"bench{i:02d}", f"bench-pw-{i:02d}", (f"bench{i:02d}@example.test",), ())
            for i in range(count)]


def people_ldif(people: list[Person]) -> str:
    out: list[str] = []
    for p in people:
        out += [f"dn: uid={p.name},{PEOPLE_DN}", "objectClass: inetOrgPerson",
                f"uid: {p.name}", f"cn: {p.name}", f"sn: {p.name}",
                *[f"mail: {a}" for a in p.addresses],
                f"userPassword: {ldap_salted_sha1.hash(p.password)}", ""]
    return "\n".join(out) + "\n"


# A stand-in for Active Directory's user schema (OpenLDAP's msuser.schema is informational and
# defines no matching rules): the attributes mailkeep's schema = "ad" defaults use, with AD's
# names and comparison rules, under a private test OID arc.
AD_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'sAMAccountName' EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.2 NAME 'userPrincipalName' EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.3 NAME 'proxyAddresses' EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.55555.1.4 NAME 'userAccountControl' EQUALITY integerMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.5 NAME 'memberOf' EQUALITY distinguishedNameMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
attributetype ( 1.3.6.1.4.1.55555.1.6 NAME 'objectCategory' EQUALITY caseIgnoreMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'user' SUP organizationalPerson STRUCTURAL
  MAY ( sAMAccountName $ userPrincipalName $ proxyAddresses $ userAccountControl $
        memberOf $ objectCategory $ mail ) )
"""
AD_DN = f"ou=ad,{BASE_DN}"


def ad_ldif() -> str:
    """Active Directory-like users: dave (enabled, in two groups, with proxy addresses) and
    erin (disabled: userAccountControl 514 = NORMAL_ACCOUNT | ACCOUNTDISABLE)."""
    out = [f"dn: {AD_DN}", "objectClass: organizationalUnit", "ou: ad", ""]
    for name, control in (("Dave", 512), ("Erin", 514)):
        low = name.lower()
        out += [f"dn: cn={name} Example,{AD_DN}", "objectClass: user",
                f"cn: {name} Example", "sn: Example", f"sAMAccountName: {name}",
                f"userPrincipalName: {low}@corp.example.test", f"mail: {low}@example.test",
                f"proxyAddresses: SMTP:{low}@example.test",
                f"proxyAddresses: smtp:{low[0]}.example@example.test",
                "proxyAddresses: X400:c=US;a= ;p=Example;o=Exchange;s=Example;",
                f"memberOf: CN=HelpDesk,OU=Groups,{AD_DN}",
                f"memberOf: CN=Mail Users,OU=Groups,{AD_DN}",
                f"userAccountControl: {control}", "objectCategory: person",
                f"userPassword: {ldap_salted_sha1.hash(low + '-ad-pw')}", ""]
    return "\n".join(out) + "\n"


def ldif() -> str:
    """The directory tree for slapd: people (inetOrgPerson), groups (groupOfNames), and the
    service account mailkeep searches with."""
    out = [f"dn: {BASE_DN}", "objectClass: dcObject", "objectClass: organization",
           "o: Example", "dc: example", "",
           f"dn: {PEOPLE_DN}", "objectClass: organizationalUnit", "ou: people", "",
           f"dn: {GROUPS_DN}", "objectClass: organizationalUnit", "ou: groups", "",
           f"dn: ou=services,{BASE_DN}", "objectClass: organizationalUnit", "ou: services",
           "",
           f"dn: {SERVICE_DN}", "objectClass: person", "cn: mailkeep", "sn: mailkeep",
           f"userPassword: {ldap_salted_sha1.hash(SERVICE_PASSWORD)}", ""]
    for p in PEOPLE:
        # carol's password is a {CRYPT} sha512-crypt hash, as many directories hold them.
        stored = ("{CRYPT}" + sha512_crypt.using(rounds=5000).hash(p.password)
                  if p.scheme == "sha512" else ldap_salted_sha1.hash(p.password))
        out += [f"dn: uid={p.name},{PEOPLE_DN}", "objectClass: inetOrgPerson",
                f"uid: {p.name}", f"cn: {p.name.title()}", f"sn: {p.name.title()}",
                *[f"mail: {a}" for a in p.addresses], f"userPassword: {stored}", ""]
    groups = sorted({g for p in PEOPLE for g in p.groups})
    for g in groups:
        members = [p.name for p in PEOPLE if g in p.groups]
        out += [f"dn: cn={g},{GROUPS_DN}", "objectClass: groupOfNames", f"cn: {g}",
                *[f"member: uid={m},{PEOPLE_DN}" for m in members], ""]
    # Two entries sharing a mail address: a login by it is ambiguous and must be refused.
    for n in (1, 2):
        out += [f"dn: uid=twin{n},{PEOPLE_DN}", "objectClass: inetOrgPerson",
                f"uid: twin{n}", f"cn: Twin {n}", "sn: Twin", "mail: twins@example.test",
                f"userPassword: {ldap_salted_sha1.hash('twin-pw')}", ""]
    return "\n".join(out) + "\n" + ad_ldif()
