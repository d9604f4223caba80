"""Between the spool and the DSN builder: which recipients a report covers, and the report.

The runner decides *when* (a permanent failure, expiry, the delay warning, a success the
sender asked to hear about); this module turns spool recipients into RFC 3464 reports and
asks relay/dsn.py for the message, which also decides *whether* (never to <>, never about a
report, never against NOTIFY).
"""

from __future__ import annotations

import datetime as dt

from mailkeep.proto.dsn import MailDsnParams, NotifyOn, OriginalRecipient, Ret
from mailkeep.relay.dsn import Action, Dsn, NoDsn, OriginalMessage, RecipientReport, build_dsn
from mailkeep.relay.spool import Notice, SpoolEntry, SpoolRecipient


def notify_of(rcpt: SpoolRecipient) -> frozenset[NotifyOn] | None:
    if rcpt.notify is None:
        return None
    return frozenset(NotifyOn(n) for n in rcpt.notify if n in NotifyOn.__members__)


def orcpt_of(rcpt: SpoolRecipient) -> OriginalRecipient | None:
    if not rcpt.orcpt:
        return None
    addr_type, address = rcpt.orcpt
    return OriginalRecipient(addr_type, address)


def _when(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def report(rcpt: SpoolRecipient, action: Action, *, now: float,
           will_retry_until: float | None = None) -> RecipientReport:
    status = rcpt.dsn_status
    wanted_class = {Action.FAILED: "5", Action.DELAYED: "4"}.get(action, "2")
    if not status or status[0] != wanted_class:
        status = {"5": "5.0.0", "4": "4.0.0", "2": "2.0.0"}[wanted_class]
    return RecipientReport(
        final_recipient=rcpt.address, action=action, status=status,
        notify=notify_of(rcpt), original_recipient=orcpt_of(rcpt),
        remote_mta=rcpt.remote_mta.split(" ", 1)[0] or None,
        diagnostic=rcpt.reply or None, last_attempt=_when(now),
        will_retry_until=None if will_retry_until is None else _when(will_retry_until))


def build(entry: SpoolEntry, content: bytes, reports: list[RecipientReport], *,
          hostname: str, now: float) -> Dsn | NoDsn:
    params = MailDsnParams(ret=Ret(entry.ret) if entry.ret in ("FULL", "HDRS") else None,
                           envid=entry.envid)
    original = OriginalMessage(entry.mail_from, content, _when(entry.arrival), params)
    return build_dsn(original, reports, reporting_mta=hostname, now=_when(now))


def for_notice(entry: SpoolEntry, content: bytes, notice: Notice, *, hostname: str,
               max_lifetime: float) -> Dsn | NoDsn:
    """The report a logged notice stands for, as of the notice's own time: the same report
    whenever it is built (at the attempt that decided it, or at a restart after a crash)."""
    action = Action(notice.action)
    until = entry.arrival + max_lifetime if action is Action.DELAYED else None
    recipients = [entry.recipients[i] for i in notice.recipients]
    return build(entry, content,
                 [report(r, Action.RELAYED if action is Action.DELIVERED
                         and r.status == "relayed" else action, now=notice.at,
                         will_retry_until=until) for r in recipients],
                 hostname=hostname, now=notice.at)
