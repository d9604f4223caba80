"""RFC 6851 MOVE and UID MOVE: the messages leave the selected mailbox for another.

What the client is told, in this order (RFC 6851 §4.3, §4.4): an untagged
OK [COPYUID uidvalidity source-uids target-uids] (RFC 4315, since we offer UIDPLUS), then an
EXPUNGE for each moved message (highest sequence number first) -- or one VANISHED once the
client enabled QRESYNC -- then the tagged OK. The
store moves each message file by one rename, so a message is never in both folders nor in
neither (store/maildir/move.py). MOVE within one account never changes what its quota counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.render import untagged_status
from mailkeep.proto.imap.sequence import uid_set
from mailkeep.server import imap_sync
from mailkeep.store.base import NoSuchFolder

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor


async def cmd_move(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, ext.Move)
    view = ex._selected()
    if ex._bad_numbers(command.sequence_set, command.uid):
        return Outcome("BAD", "No such message sequence number.")
    if view.readonly:
        # RFC 6851 §3.3: MOVE expunges from the source, which EXAMINE does not allow.
        return Outcome("NO", "Mailbox is read-only.")
    uids = [u for _, u in view.resolve(command.sequence_set, uid=command.uid)
            if u not in view.gone]
    if not await ex.store.folder_exists(ex.account, command.mailbox):
        raise NoSuchFolder("Mailbox does not exist.")  # [TRYCREATE] (RFC 6851 §3.3)
    if not uids:
        return Outcome("OK", "MOVE completed.")
    mapping = await ex.store.move(ex.account, view.folder, uids, command.mailbox)
    if mapping:
        validity = await ex.store.uidvalidity(ex.account, command.mailbox)
        sources = sorted(mapping)
        code = (f"COPYUID {validity} {uid_set(sources)} "
                f"{uid_set([mapping[s] for s in sources])}")
        await ex.emit(untagged_status("OK", "Moved UIDs.", code))
        # One VANISHED instead of the EXPUNGEs once QRESYNC is enabled (RFC 6851 §4.4).
        for line in view.expunge(mapping):
            await ex.emit(line)
        if view.qresync:
            return Outcome("OK", "MOVE completed.",
                           await imap_sync.expunged_highestmodseq(ex, view))
    return Outcome("OK", "MOVE completed.")
