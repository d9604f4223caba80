"""One SMTP mail transaction on a connector: MAIL, RCPT and the end of DATA.

The session (server/smtp.py) parses commands and runs the dialogue; this module decides, per
connector kind (proto/connector.py), who may send what to whom, resolves recipients against
the directory, finishes the message (trace fields, Authentication-Results on the inbound MX,
DKIM on the way out) and hands it to the spool. Every reply it returns is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailkeep.directory.base import DirectoryUnavailable
from mailkeep.observe.metrics import MessageRefusal
from mailkeep.proto.address import canonical
from mailkeep.proto.connector import (
    SenderRule,
    envelope_sender_refusal,
    fallback_refusal,
    relay_refusal,
)
from mailkeep.proto.dsn import (
    DsnParameterError,
    MailDsnParams,
    parse_mail_params,
    parse_rcpt_params,
)
from mailkeep.proto.message import (
    addresses_of,
    has_bare_cr_or_lf,
    parse_header_fields,
    remove_fields,
    split_message,
)
from mailkeep.proto.printable import printable
from mailkeep.proto.smtp_path import PathArgument
from mailkeep.proto.submission import (
    Refusal,
    check_header_senders,
    complete_message,
    domain_of,
    received_field,
)
from mailkeep.relay import authresults, dkim
from mailkeep.relay.spool import SpoolEntry, SpoolRecipient, new_id
from mailkeep.store.base import DeliveryError, DiskFull

if TYPE_CHECKING:
    from mailkeep.server.smtp import SmtpSession

log = logging.getLogger("mailkeep.smtp")

# MAIL parameters we know (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET and
# ENVID, RFC 4954 §5 AUTH). Anything else is 555 (RFC 5321 §4.1.1.11).
MAIL_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})
# After spooling, the reply waits at most this long for local delivery (normally a few
# milliseconds; a slow disk must not hold the client: the message is safe in the spool).
LOCAL_DELIVERY_WAIT = 5.0


@dataclass(slots=True)
class Transaction:
    mail_from: str
    smtputf8: bool
    body_8bit: bool
    dsn: MailDsnParams
    recipients: list[SpoolRecipient] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # canonical recipient addresses


def refused(session: SmtpSession, reason: MessageRefusal, reply: str) -> str:
    """A refusal of policy or resources (not of syntax), counted by reason."""
    session.services.metrics.message_refused(session.listener.name, reason)
    return reply


def sender_rule(session: SmtpSession) -> SenderRule:
    listener = session.listener
    account = session.account
    if listener.protocol == "smtp":
        return SenderRule(anyone=True)
    own = account.addresses if account is not None else ()
    patterns = listener.senders if listener.protocol == "relay" else ()
    return SenderRule(addresses=own, patterns=patterns)


def mail(session: SmtpSession, path: PathArgument) -> tuple[Transaction | None, str]:
    """MAIL FROM: a new transaction and "250", or None and the refusal."""
    params = path.params
    unknown = sorted(set(params) - MAIL_PARAMETERS)
    if unknown:
        return None, f"555 5.5.4 MAIL parameter {unknown[0]} not recognised"
    size = params.get("SIZE")
    if size is not None:
        if not size.isdigit():
            return None, "501 5.5.4 Syntax: SIZE=<octets>"
        if int(size) > session.max_message_size:
            # RFC 1870 §6.3: refuse at MAIL when the declared size is over the limit.
            return None, refused(session, "size", "552 5.3.4 Message size exceeds fixed "
                                 "maximum message size")
    body = (params.get("BODY") or "7BIT").upper()
    if "BODY" in params and body not in ("7BIT", "8BITMIME"):
        return None, "501 5.5.4 BODY is 7BIT or 8BITMIME (RFC 6152)"
    if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
        return None, "501 5.5.4 SMTPUTF8 takes no value (RFC 6531)"
    try:
        dsn = parse_mail_params(f"{k}={v}" for k, v in params.items()
                                if k in ("RET", "ENVID") and v is not None)
    except DsnParameterError as exc:
        return None, exc.reply
    if ("RET" in params or "ENVID" in params) and any(
            params[k] is None for k in ("RET", "ENVID") if k in params):
        return None, "501 5.5.4 Syntax: RET=FULL|HDRS, ENVID=<xtext> (RFC 3461)"
    listener = session.listener
    if listener.protocol == "smtp" and path.address and \
            session.services.config.is_local_domain(domain_of(path.address)):
        # Mail claiming a local sender from the internet is a spoof (our own users send on
        # submission); SPF and DMARC would say the same, late and only if published.
        return None, refused(session, "local_sender",
                             f"553 5.7.1 Sender address <{path.address}> is in a local "
                             "domain: send through the submission port (587) with a login")
    refusal = envelope_sender_refusal(sender_rule(session), path.address)
    if refusal is not None:
        log.warning("conn=%s envelope sender refused: %s user=%s", session.conn_id,
                    printable(path.address), session.account.name if session.account else "-")
        return None, refused(session, "sender", refusal)
    limiter = session.rate_limiter
    if limiter is not None and not limiter.allow(session.peer_ip):
        # Postfix smtpd_client_message_rate_limit: 450 4.7.1, a temporary refusal.
        log.warning("conn=%s rate limit of %s reached for %s", session.conn_id,
                    listener.rate, session.peer_ip)
        return None, refused(session, "rate_limit", f"450 4.7.1 Rate limit exceeded "
                             f"({listener.rate}), try again later")
    txn = Transaction(path.address, "SMTPUTF8" in params, body == "8BITMIME", dsn)
    return txn, "250 2.1.0 Sender OK"


async def rcpt(session: SmtpSession, txn: Transaction, path: PathArgument) -> str:
    """RCPT TO: the recipient added and "250", or the refusal."""
    params = path.params
    unknown = sorted(set(params) - RCPT_PARAMETERS)
    if unknown:
        return f"555 5.5.4 RCPT parameter {unknown[0]} not recognised"
    try:
        dsn = parse_rcpt_params(f"{k}={v}" for k, v in params.items() if v is not None)
    except DsnParameterError as exc:
        return exc.reply
    limit = session.services.config.submission.max_recipients
    if len(txn.recipients) >= limit:
        # RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client sends the rest later.
        return refused(session, "too_many_recipients",
                       f"452 4.5.3 Too many recipients (at most {limit})")
    config = session.services.config
    address = path.address
    if address == "postmaster":  # RFC 5321 §4.1.1.3: <Postmaster> with no domain
        address = f"postmaster@{config.domains[0]}"
    domain = domain_of(address)
    if domain.startswith("["):
        # DEVIATION (RFC 5321 §4.1.3 lets a server accept address literals): mail to an IP
        # address is never routed here; say so now rather than bounce it later.
        return refused(session, "address_literal",
                       f"550 5.1.3 <{address}>: address literals are not accepted here")
    if config.is_local_domain(domain):
        try:
            account = await session.services.directory.lookup(canonical(address))
        except DirectoryUnavailable:
            return refused(session, "directory_unavailable",
                           "451 4.3.0 Cannot look up the recipient now, try again later")
        if account is None:
            if domain in config.queue.fallback_routes:
                refusal = fallback_refusal(address)
                if refusal is not None:
                    log.warning("conn=%s source-routed recipient not forwarded: <%s> peer=%s",
                                session.conn_id, printable(address), session.peer_ip)
                    return refusal
                kind, account_name = "remote", None  # split delivery: the old server's user
            else:
                return refused(session, "unknown_recipient",
                               f"550 5.1.1 <{address}>: no such user here")
        else:
            kind, account_name = "local", account.name
    elif session.may_relay:
        kind, account_name = "remote", None
    else:
        log.warning("conn=%s relay refused to <%s> peer=%s", session.conn_id,
                    printable(address), session.peer_ip)
        return refused(session, "relay_denied", relay_refusal(address))
    key = canonical(address)
    if key not in txn.seen:  # the same mailbox twice gets one copy
        txn.seen.add(key)
        notify = None if dsn.notify is None else sorted(n.value for n in dsn.notify)
        orcpt = None if dsn.orcpt is None else [dsn.orcpt.addr_type, dsn.orcpt.address]
        txn.recipients.append(SpoolRecipient(address, kind,  # type: ignore[arg-type]
                                             account_name, notify=notify, orcpt=orcpt))
    return "250 2.1.5 Recipient OK"


async def data(session: SmtpSession, txn: Transaction, content: bytes) -> str:
    """The end of DATA: check, finish and spool the message; "250 ... queued as ID"."""
    listener = session.listener
    services = session.services
    config = services.config
    if has_bare_cr_or_lf(content):
        return refused(session, "bare_line_end", "550 5.6.0 Message refused: bare CR or LF "
                       "in message (RFC 5321 §2.3.8)")
    account = session.account
    if listener.protocol == "submission" and account is not None:
        refusal = check_header_senders(account.addresses, account.send_as_others, content)
    elif listener.protocol == "relay":
        refusal = _relay_header_refusal(session, content)
    else:
        refusal = None
    if refusal is not None:
        log.warning("conn=%s header sender refused for %s: %s", session.conn_id,
                    account.name if account else session.peer_ip, printable(refusal.reply))
        return refused(session, "header_sender", refusal.reply)
    entry_id = new_id()
    now = dt.datetime.now(dt.UTC).astimezone()
    received = received_field(
        helo=session.helo_name, peer_ip=session.peer_ip, hostname=config.hostname,
        queue_id=entry_id, tls=session.tls, authenticated=account is not None,
        recipients=[r.address for r in txn.recipients], now=now)
    if listener.protocol == "smtp":
        message = await _inbound(session, txn, content, received)
        if isinstance(message, str):
            return message
    else:
        message = complete_message(content, received=received, hostname=config.hostname,
                                   mail_from=txn.mail_from, now=now)
        message = await _sign(session, message)
    entry = SpoolEntry(
        id=entry_id, mail_from=txn.mail_from, recipients=txn.recipients,
        arrival=now.timestamp(), size=len(message),
        ret=txn.dsn.ret.value if txn.dsn.ret else None, envid=txn.dsn.envid,
        smtputf8=txn.smtputf8, body_8bit=txn.body_8bit or not message.isascii(),
        source={"listener": listener.name, "client": session.peer_ip,
                "user": account.name if account else ""})
    runner = services.runner
    assert runner is not None
    try:
        local_done = await runner.enqueue(entry, message)
    except DiskFull as exc:
        log.error("conn=%s message refused, spool full: %s", session.conn_id, exc)
        # RFC 3463 X.3.1: mail system full.
        return refused(session, "storage", "452 4.3.1 Insufficient system storage, try "
                       "again later")
    except DeliveryError as exc:
        log.error("conn=%s message not spooled: %s", session.conn_id, exc)
        return refused(session, "storage", "451 4.3.0 Cannot queue the message now, try "
                       "again later")
    # Spooled: the message is safe. Local recipients are usually in their INBOX a few
    # milliseconds later; wait that long so "sent" means "arrived" for local mail.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LOCAL_DELIVERY_WAIT):
            await asyncio.shield(local_done)
    session.messages += 1
    services.metrics.message_accepted(listener.name)
    session.errors = 0  # like Postfix: errors are forgiven once mail is accepted
    log.info("conn=%s accepted id=%s from=<%s> rcpts=%d size=%d", session.conn_id, entry_id,
             printable(txn.mail_from), len(txn.recipients), len(message))
    return f"250 2.0.0 Ok: queued as {entry_id}"


def _relay_header_refusal(session: SmtpSession, content: bytes) -> Refusal | None:
    """An application connector: header From/Sender must be allowed like the envelope
    sender (the account's addresses once logged in, and the connector's `senders`)."""
    rule = sender_rule(session)
    account = session.account
    if account is not None and account.send_as_others:
        return None
    owned = tuple(rule.addresses)
    # check_header_senders compares exact addresses; widen it with the domain patterns.
    refusal = check_header_senders(owned, False, content)
    if refusal is None:
        return None
    fields = parse_header_fields(split_message(content)[0])
    for key in ("from", "sender"):
        found = addresses_of(fields, key)
        if found is None or not all(rule.allows(a) for a in found):
            return refusal
    return None


async def _inbound(session: SmtpSession, txn: Transaction, content: bytes,
                   received: bytes) -> bytes | str:
    """The inbound MX: forged Authentication-Results of ours removed (RFC 8601 §5), SPF,
    DKIM and DMARC checked off the loop, our own field on top, DMARC p=reject refused if
    the connector says so."""
    config = session.services.config
    content = authresults.strip_forged(remove_fields(content, "return-path"),
                                       {config.hostname})
    peer = authresults.Peer(session.peer_ip, session.helo_name, txn.mail_from)
    verdict = await authresults.authenticate_async(content, peer, config.hostname,
                                                   session.services.auth_resolver)
    refusal = authresults.dmarc_refusal(
        verdict, reject_dmarc_failures=session.listener.reject_dmarc_failures)
    if refusal is not None:
        log.warning("conn=%s refused by DMARC policy: from=<%s> peer=%s", session.conn_id,
                    printable(txn.mail_from), session.peer_ip)
        return refused(session, "dmarc", refusal)
    return received + authresults.add_results(content, verdict)


async def _sign(session: SmtpSession, message: bytes) -> bytes:
    """DKIM-sign mail whose From is in a local domain with a key (RFC 6376)."""
    keys = session.services.dkim_keys
    if not keys:
        return message
    found = addresses_of(parse_header_fields(split_message(message)[0]), "from") or []
    domains = {domain_of(a) for a in found}
    key = next((keys[d] for d in sorted(domains) if d in keys), None)
    if key is None:
        return message
    return await dkim.sign_async(message, key)
