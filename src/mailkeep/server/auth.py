"""The one authentication path of every door: throttle -> verify -> authzid -> outcome.

POP3, IMAP and submission each turn the outcome into their own reply; the decisions
(who is slowed down, who is refused, what is logged) are made here once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from mailkeep.directory.base import Account, DirectoryUnavailable
from mailkeep.proto.sasl import Credentials
from mailkeep.security.throttle import Verdict
from mailkeep.server.services import Services

log = logging.getLogger("mailkeep.auth")

# A directory that takes longer than this to answer is treated as down for this login
# (a temporary failure), so a slow LDAP server can never hang a client. argon2id takes
# about 25 ms here; an LDAP bind a few ms on a LAN.
VERIFY_TIMEOUT_SECONDS = 15.0
# How often an attempt held back by the throttle (BUSY) looks again.
BUSY_RETRY_SECONDS = 0.02


class Failure(enum.Enum):
    BLOCKED = "blocked"            # the address is throttled: try later
    CREDENTIALS = "credentials"    # wrong login or password (or authzid not allowed)
    UNAVAILABLE = "unavailable"    # the directory cannot answer now: ours, temporary


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    account: Account | None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.account is not None


async def login(services: Services, *, peer_ip: str, creds: Credentials, service: str,
                mechanism: str, conn_id: str,
                required_groups: tuple[str, ...] = ()) -> LoginOutcome:
    """`service` names the door (directory.base.SERVICES: app passwords are per door);
    `required_groups`, when given, admits only members of one of those directory groups
    (a connector's auth_groups). Not being a member is answered like a wrong password, and
    counted like one: the reply never says that the password itself was right."""
    throttle = services.throttle
    deadline = asyncio.get_running_loop().time() + VERIFY_TIMEOUT_SECONDS
    while True:
        verdict, wait = throttle.begin(peer_ip)
        if verdict is not Verdict.BUSY or asyncio.get_running_loop().time() > deadline:
            break
        # As many attempts from this address are being checked as could reach its block:
        # wait for one to end (a guesser's parallel connections are checked a few at a
        # time; an office's burst of good logins just queues for milliseconds).
        await asyncio.sleep(BUSY_RETRY_SECONDS)
    metrics = services.metrics
    if verdict is not Verdict.ALLOW:
        metrics.login(service, "throttled")
        log.warning("conn=%s %s auth refused: %s is blocked for %.0fs more", conn_id, service,
                    peer_ip, wait)
        return LoginOutcome(None, Failure.BLOCKED)
    ok = False
    try:
        if wait:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT_SECONDS):
                account = await services.directory.authenticate(creds.login, creds.password,
                                                                service)
        except (DirectoryUnavailable, TimeoutError) as exc:
            log.error("conn=%s %s auth: directory unavailable: %s", conn_id, service,
                      str(exc) or "timed out")
            ok = True  # not the client's failure: it must not count towards a block
            metrics.login(service, "unavailable")
            return LoginOutcome(None, Failure.UNAVAILABLE)
        authzid = creds.authzid.lower()
        if account is not None and authzid and authzid not in (creds.login.lower(),
                                                               account.name) \
                and not account.owns(authzid):
            account = None  # RFC 4616 §2: nobody acts for another user
        if account is not None and required_groups and \
                not account.in_any_group(required_groups):
            log.warning("conn=%s %s auth refused: %s is in none of the groups %s", conn_id,
                        service, account.name, ", ".join(required_groups))
            account = None
        if account is None:
            metrics.login(service, "failed")
            log.warning("conn=%s %s auth failed peer=%s mechanism=%s login=%r", conn_id,
                        service, peer_ip, mechanism, creds.login[:64])
            return LoginOutcome(None, Failure.CREDENTIALS)
        ok = True
        metrics.login(service, "ok")
        log.info("conn=%s %s auth ok user=%s peer=%s mechanism=%s", conn_id, service,
                 account.name, peer_ip, mechanism)
        return LoginOutcome(account)
    finally:
        throttle.end(peer_ip, ok)
