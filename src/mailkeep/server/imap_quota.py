"""RFC 9208 QUOTA: GETQUOTA, GETQUOTAROOT, and the check before a change adds messages.

One quota root per account, named "" (store/quota.py). An account without limits has no
quota root: GETQUOTAROOT names none (RFC 9208 §4.1.2 allows a mailbox without any) and
GETQUOTA "" answers NO. SETQUOTA is not offered (no QUOTASET capability): limits are the
administrator's, in the configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.render import untagged, untagged_status
from mailkeep.proto.imap.values import Atom, Value
from mailkeep.store.base import NoSuchFolder, OverQuota

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor

ROOT = ""  # the account's one quota root (RFC 9208 §4.1.2 example: QUOTAROOT INBOX "")
OVERQUOTA = "OVERQUOTA"  # RFC 9208 §5 (RFC 5530 §3)


async def quota_response(ex: ImapExecutor) -> bytes:
    """RFC 9208 §5.1: * QUOTA "" (STORAGE used limit MESSAGE used limit)."""
    usage = await ex.store.usage(ex.account)
    data: list[Value] = []
    for name, used, limit in ex.options.quota.resources(usage):
        data += [Atom(name), used, limit]
    return untagged("QUOTA", ROOT, data)


async def cmd_getquota(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, ext.GetQuota)
    if command.root != ROOT or not ex.options.quota.limited:
        return Outcome("NO", "No such quota root.", "NONEXISTENT")
    await ex.emit(await quota_response(ex))
    return Outcome("OK", "GETQUOTA completed.")


async def cmd_getquotaroot(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, ext.GetQuotaRoot)
    if not await ex.store.folder_exists(ex.account, command.mailbox):
        raise NoSuchFolder("Mailbox does not exist.")
    name = ex.wire_name(command.mailbox)
    if not ex.options.quota.limited:
        await ex.emit(untagged("QUOTAROOT", name))  # RFC 9208 §4.1.2: no quota root
        return Outcome("OK", "GETQUOTAROOT completed.")
    await ex.emit(untagged("QUOTAROOT", name, ROOT))
    await ex.emit(await quota_response(ex))
    return Outcome("OK", "GETQUOTAROOT completed.")


async def check(ex: ImapExecutor, octets: int, messages: int) -> None:
    """OverQuota if adding this much would take the account past a limit (RFC 9208 §5:
    the command fails with NO [OVERQUOTA] and nothing is stored)."""
    quota = ex.options.quota
    if not quota.limited:
        return
    resource = quota.exceeded(await ex.store.usage(ex.account), octets, messages)
    if resource is not None:
        raise OverQuota(f"Quota exceeded ({resource}).")


async def warn_if_full(ex: ImapExecutor) -> None:
    """RFC 9208 §5: an untagged NO [OVERQUOTA] when the account is at or past a limit after
    a change (a client can tell its user before the next APPEND fails)."""
    quota = ex.options.quota
    if quota.limited and quota.exceeded(await ex.store.usage(ex.account), 0, 1) is not None:
        await ex.emit(untagged_status("NO", "Mailbox is full.", OVERQUOTA))
