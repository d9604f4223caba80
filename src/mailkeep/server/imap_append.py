"""APPEND with RFC 3502 MULTIAPPEND (several messages, all or none), RFC 4315 APPENDUID
(a UID set for several), RFC 9208 quota, RFC 6855 UTF-8 messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.mailboxview import RECENT
from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.render import response_code
from mailkeep.proto.imap.sequence import compress
from mailkeep.server import imap_quota
from mailkeep.server.imap_fetch import PARSE_OFF_LOOP_OCTETS, cache_key
from mailkeep.store.base import Appended, NewMessage, to_crlf
from mailkeep.store.names import same_folder

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor


async def cmd_append(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Append)
    messages = command.messages
    if any(not m.message for m in messages):
        return Outcome("NO", "Cannot store an empty message.")
    # RFC 3502 §6.3.11: the messages are appended together or not at all, so the quota is
    # checked for all of them at once.
    await imap_quota.check(ex, sum(len(m.message) for m in messages), len(messages))
    new = [NewMessage(m.message, tuple(f for f in m.flags if f != RECENT), m.internaldate)
           for m in messages]
    stored = await ex.store.append_many(ex.account, command.mailbox, new)
    _keep_parsed(ex, command.mailbox, stored, new)
    # RFC 4315 §3: APPENDUID lets clients (mbsync) learn the new UIDs without a search; a
    # MULTIAPPEND gets a uid-set (the UIDs ascend: compress() may use ranges).
    code = response_code("APPENDUID", stored.uidvalidity) + " " + compress(stored.uids)
    await imap_quota.warn_if_full(ex)
    return Outcome("OK", "APPEND completed.", code)


def _keep_parsed(ex: ImapExecutor, mailbox: str, stored: Appended,
                 messages: Sequence[NewMessage]) -> None:
    """Messages appended to the selected mailbox go into the parsed-message cache now,
    from the bytes in hand (the file holds them as they are; a read gives them with CRLF
    line ends): the client that saved a draft or a sent message usually fetches or searches
    it next, and that then needs no read in an I/O thread and no second parse."""
    view = ex.view
    if view is None or stored.uidvalidity != view.uidvalidity \
            or not same_folder(mailbox, view.folder):
        return
    for message, uid in zip(messages, stored.uids, strict=True):
        if len(message.data) < PARSE_OFF_LOOP_OCTETS:
            ex.cache.put(cache_key(ex, view, uid), parse_message(to_crlf(message.data)))
