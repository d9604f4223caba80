"""The IMAP executor: runs the commands the machine hands over (events.Execute) against the
store, for one authenticated session.

proto/imap/machine.py explains the split: the machine frames, parses, checks the state
table and does the dialogues; this module does the store calls, with the pure helpers of
proto/imap (mailboxview, fetch, listing, search, render) deciding what to say. Untagged
data goes out through `write` as it is made (a FETCH of 10,000 messages is never held in
memory whole); the tagged line is returned to the driver for machine.executed().

This module holds the executor itself (run, dispatch, sync: the session's one untagged
channel) and the commands about the selected mailbox's state (SELECT/EXAMINE, CLOSE,
UNSELECT, EXPUNGE, SEARCH, STORE, COPY). The others live by topic, each a set of
`cmd_x(executor, command)` functions in the HANDLERS table at the bottom:

    imap_folders  LIST (+ LIST-EXTENDED/STATUS, SPECIAL-USE), CREATE, DELETE, RENAME,
                  SUBSCRIBE, UNSUBSCRIBE, LSUB, STATUS
    imap_fetch    FETCH, and the parsed-message reading FETCH and SEARCH share
    imap_append   APPEND (MULTIAPPEND, UTF8)       imap_move   MOVE (RFC 6851)
    imap_quota    GETQUOTA, GETQUOTAROOT, quota checks (RFC 9208)
    imap_search   SEARCH evaluation                imap_sync   CONDSTORE/QRESYNC parts
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence, Set
from dataclasses import replace

from mailkeep.proto.imap import condstore as cs
from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap import mutf7
from mailkeep.proto.imap.enable import UTF8_ACCEPT
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.mailboxview import RECENT, MailboxView
from mailkeep.proto.imap.mime import MimePart
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.proto.imap.mutf7 import InvalidMailboxName
from mailkeep.proto.imap.render import (
    response_code,
    untagged,
    untagged_status,
)
from mailkeep.proto.imap.sequence import SequenceSet, compress, uid_set
from mailkeep.proto.imap.session import Authenticated, Selected, SessionState
from mailkeep.server import (
    imap_append,
    imap_fetch,
    imap_folders,
    imap_move,
    imap_quota,
    imap_search,
    imap_sync,
)
from mailkeep.server.imap_folders import ImapOptions
from mailkeep.server.slices import Slices, TooExpensive
from mailkeep.server.stream import SessionFinished
from mailkeep.store.base import (
    FlagMode,
    FolderExists,
    MailStore,
    NoSuchFolder,
    OverQuota,
    StoreError,
    StoreRefusal,
)
from mailkeep.store.changes import acting_session
from mailkeep.store.names import same_folder

log = logging.getLogger("mailkeep.imap")



# A NOOP or CHECK this soon after the session's last look at its folder, with nothing
# changed since as far as the change feed and inotify can tell, is answered without a new
# look (_recently_looked). Our choice: the bound on how much later than before a NOOP can
# report a change inotify cannot see (a network filesystem written by another host); a
# client polling every few seconds still gets a look each time.
NOOP_LOOK_SECONDS = 1.0
# Untagged data is handed to the transport in batches of about this many octets, with a
# drain in between, so a slow reader holds at most this much of a long FETCH in memory.
FLUSH_OCTETS = 256 * 1024
_STORE_MODES = {g.StoreMode.REPLACE: FlagMode.SET, g.StoreMode.ADD: FlagMode.ADD,
                g.StoreMode.REMOVE: FlagMode.REMOVE}


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip() or "refused"


# The fields of the command dataclasses that hold mailbox names (grammar.mailbox).
_MAILBOX_FIELDS = ("mailbox", "new_name", "reference", "pattern")


def _invalid_name(command: g.CommandType) -> bool:
    return any(isinstance(getattr(command, f, None), InvalidMailboxName)
               for f in _MAILBOX_FIELDS)


class ImapExecutor:
    """Runs store commands for one logged-in session. It keeps no session state of its own:
    each command comes with the state it runs in (proto/imap/session.py), and the outcome
    says which state follows. `view` is the selected mailbox *of the command being run*."""

    def __init__(self, store: MailStore, account: str, cache: MimeCache,
                 write: Callable[[bytes], None], flush: Callable[[], Awaitable[None]], *,
                 conn_id: str = "-", session_id: int = 0,
                 options: ImapOptions | None = None) -> None:
        self.store = store
        self.account = account
        self.cache = cache
        self._write = write
        self._flush = flush
        self._pending = 0
        self.conn_id = conn_id
        self.session_id = session_id
        self.view: MailboxView | None = None
        # RFC 5161 / RFC 7162 §3.1: what the session of the command being run has enabled.
        self.enabled: frozenset[str] = frozenset()
        self.options = options if options is not None else ImapOptions()
        self.provisioned = False  # RFC 6154 default folders looked after (first LIST)
        # The selected mailbox's view at the session's last look at the folder, and when
        # that look began (time.monotonic()): _recently_looked().
        self._looked: tuple[MailboxView | None, float] = (None, 0.0)

    @property
    def utf8(self) -> bool:
        """RFC 6855 UTF8=ACCEPT is enabled: mailbox names go out as UTF-8."""
        return UTF8_ACCEPT in self.enabled

    def wire_name(self, name: str) -> str:
        """A mailbox name as the client reads it: modified UTF-7 (RFC 3501 §5.1.3), or
        UTF-8 once it enabled UTF8=ACCEPT (RFC 6855 §3)."""
        return name if self.utf8 else mutf7.encode(name)

    # -- plumbing -------------------------------------------------------------------------

    async def emit(self, data: bytes) -> None:
        """The one channel for untagged output: command data and IDLE updates alike."""
        self._write(data)
        self._pending += len(data)
        if self._pending >= FLUSH_OCTETS:
            self._pending = 0
            await self._flush()

    async def flush(self) -> None:
        if self._pending:
            self._pending = 0
            await self._flush()

    async def run(self, command: g.CommandType, session: SessionState) -> Outcome:
        """Run one command in `session` (Authenticated or Selected)."""
        selected = session if isinstance(session, Selected) else None
        self.view = selected.view if selected is not None else None
        self.enabled = session.enabled if isinstance(session, Authenticated | Selected) \
            else frozenset()
        selecting = isinstance(command, g.Select | g.Examine)
        acting = acting_session.set(self.session_id)  # our changes: not told back to us
        try:
            outcome = await self._dispatch(command)
        except (ConnectionError, OSError, SessionFinished):
            raise
        except Exception:
            if not selecting:
                raise  # the driver logs it and answers NO [UNAVAILABLE]
            # Ours, but the state must still be mended (below), so it is answered here.
            log.exception("conn=%s %s failed", self.conn_id, command.name)
            outcome = Outcome("NO", "Internal error, try again.", "UNAVAILABLE")
        finally:
            self.view = None
            acting_session.reset(acting)
        if selecting and outcome.session is None:
            # RFC 3501 §6.3.1: a SELECT or EXAMINE that fails, for whatever reason, leaves
            # no mailbox selected.
            outcome = replace(outcome, session=Authenticated(self.account))
        new = outcome.session
        if selected is not None and new is not None and new is not selected:
            selected.leave()  # the old mailbox is no longer followed
        current = new if new is not None else session
        if isinstance(current, Authenticated | Selected):
            current.enabled = self.enabled  # ENABLEd extensions outlive SELECT and CLOSE
        if isinstance(current, Selected):
            current.view.condstore = cs.CONDSTORE in self.enabled
            current.view.qresync = cs.QRESYNC in self.enabled
        else:
            self._looked = (None, 0.0)  # nothing selected: no view kept alive for it
        if isinstance(current, Selected) and outcome.close is None and (
                current is not selected or self.should_sync(command, current)):
            # RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH without UID.
            quiet = isinstance(command, g.Fetch | g.Store | g.Search) and not command.uid
            uid_command = getattr(command, "uid", False) is True
            if current is not selected:
                current.watch = self.store.watch(self.account, current.view.folder,
                                                 self.session_id)
            else:
                closing = await self.sync(current, allow_expunge=not quiet,
                                          with_uid=uid_command)
                if closing is not None:
                    outcome = replace(outcome, session=Authenticated(self.account),
                                      close=closing)
        # What is left goes out with the tagged reply, in one TLS record and one send
        # (the session drains before it reads again): not in a write of its own.
        self._pending = 0
        return outcome

    def should_sync(self, command: g.CommandType, session: Selected) -> bool:
        """Does the end of this command need a look at the mailbox? When the change feed
        says someone changed it, or the client asked (NOOP, CHECK: how clients poll; not
        when the session looked a moment ago and nothing changed since: _recently_looked), or
        the command added messages to it (RFC 3501 §6.3.11: APPEND to the selected mailbox
        SHOULD give an EXISTS at once; so COPY and MOVE into it); a session with no feed
        subscription always looks. STORE and EXPUNGE tell the client their own changes
        (FETCH and EXPUNGE responses) and change the view themselves: a look after them
        would only find what someone else did, and the feed says when there is any."""
        if isinstance(command, g.Noop | g.Check):
            return not self._recently_looked(session)
        if isinstance(command, g.Copy | g.Append | ext.Move) \
                and same_folder(command.mailbox, session.view.folder):
            return True
        # Expunges held back during a FETCH/STORE/SEARCH (RFC 3501 §7.4.1) are told at the
        # first command that allows them.
        return session.watch is None or session.watch.pending() or bool(session.view.gone)

    def _recently_looked(self, session: Selected) -> bool:
        """Can a poll (NOOP, CHECK) be answered from the session's last look at the folder?
        When that look is under NOOP_LOOK_SECONDS old, the change feed has told nothing
        since, and the store vouches that no change is waiting to be told (Maildir: inotify
        follows the folder, and no event is queued): a new look would find only what the
        session did itself, which its view already holds."""
        watch = session.watch
        view = session.view
        looked_view, looked_at = self._looked
        return (watch is not None and not watch.pending() and not view.gone
                and looked_view is view
                and time.monotonic() - looked_at < NOOP_LOOK_SECONDS
                and self.store.quiet(self.account, view.folder))

    async def _dispatch(self, command: g.CommandType) -> Outcome:
        """The command's handler, with store errors turned into answers."""
        if _invalid_name(command):
            if isinstance(command, g.ListMailboxes | g.Lsub):
                # RFC 3501 §6.3.8: LIST answers with the names that match; none can match
                # a pattern that is not modified UTF-7.
                return Outcome("OK", f"{command.name} completed.")
            # RFC 5530 §3 CANNOT: no mailbox can ever have this name.
            return Outcome("NO", "Mailbox name is not valid modified UTF-7.", "CANNOT")
        handler = HANDLERS[command.name]
        try:
            return await handler(self, command)
        except NoSuchFolder as exc:
            code = "TRYCREATE" if isinstance(command, g.Append | g.Copy | ext.Move) \
                else "NONEXISTENT"
            return Outcome("NO", _clean(str(exc)), code)
        except OverQuota as exc:
            return Outcome("NO", _clean(str(exc)), imap_quota.OVERQUOTA)  # RFC 9208 §5
        except FolderExists as exc:
            return Outcome("NO", _clean(str(exc)), "ALREADYEXISTS")
        except StoreRefusal as exc:
            return Outcome("NO", _clean(str(exc)))
        except StoreError as exc:
            # Ours, not the client's (habit 5): logged, generic reply.
            log.error("conn=%s %s failed: %s", self.conn_id, command.name, exc)
            return Outcome("NO", "Temporary server failure, try again.", "UNAVAILABLE")

    async def sync(self, session: Selected, *, allow_expunge: bool,
                   with_uid: bool = False) -> str | None:
        """Tell the client what changed in the selected mailbox; a close reason if the
        mailbox is gone or was recreated (RFC 3501 §2.3.1.1: UIDVALIDITY changed)."""
        view = session.view
        if session.watch is not None:
            session.watch.take()  # everything reported so far is looked at now
        looked_at = time.monotonic()
        try:
            snap = await self.store.snapshot(self.account, view.folder)
        except NoSuchFolder:
            await self.emit(untagged_status("BYE", "The selected mailbox was deleted."))
            session.leave()
            return "selected mailbox deleted"
        self._looked = (view, looked_at)
        if snap.uidvalidity != view.uidvalidity:
            await self.emit(untagged_status("BYE", "The selected mailbox was recreated."))
            session.leave()
            return "UIDVALIDITY changed"
        claimed: Set[int] = frozenset()
        if snap.messages and snap.messages[-1].uid > view.largest_uid:
            claimed = snap.unclaimed if view.readonly else \
                await self.store.claim_recent(self.account, view.folder)
        for line in view.update(snap.messages, claimed=claimed, allow_expunge=allow_expunge,
                                with_uid=with_uid, modseqs=snap.modseqs,
                                highestmodseq=snap.highestmodseq):
            await self.emit(line)
        return None

    def part_batches(self, uids: Sequence[int]
                     ) -> AsyncGenerator[list[MimePart | None], None]:
        """The parsed messages of these UIDs, a batch at a time (imap_fetch.part_batches)."""
        return imap_fetch.part_batches(self, uids)

    def _selected(self) -> MailboxView:
        assert self.view is not None  # the machine's state table guarantees it
        return self.view

    # -- authenticated state --------------------------------------------------------------

    async def _cmd_noop(self, command: g.CommandType) -> Outcome:
        return Outcome("OK", "NOOP completed.")

    async def _cmd_check(self, command: g.CommandType) -> Outcome:
        # RFC 3501 §6.4.1: every change is durable when made; CHECK is a NOOP here.
        return Outcome("OK", "CHECK completed.")

    async def _cmd_select(self, command: g.CommandType) -> Outcome:
        return await self._open(command, readonly=False)

    async def _cmd_examine(self, command: g.CommandType) -> Outcome:
        return await self._open(command, readonly=True)

    async def _open(self, command: g.CommandType, *, readonly: bool) -> Outcome:
        assert isinstance(command, g.Select | g.Examine)
        params = command.params
        if params.qresync is not None and cs.QRESYNC not in self.enabled:
            # RFC 7162 §3.2.5: QRESYNC parameters without ENABLE QRESYNC are a BAD.
            return Outcome("BAD", "QRESYNC parameter without ENABLE QRESYNC.")
        if self.view is not None:
            # RFC 7162 §3.2.11: CLOSED marks where the old mailbox's responses end.
            await self.emit(untagged_status("OK", "Previous mailbox closed.", "CLOSED"))
        # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected (run() makes the
        # outcome say so whatever happens here).
        self.view = None
        try:
            if readonly:
                # RFC 3501 §6.3.2: EXAMINE must not take \Recent away from anyone.
                snap = await self.store.snapshot(self.account, command.mailbox)
                recent: Set[int] = snap.unclaimed
            else:
                recent = await self.store.claim_recent(self.account, command.mailbox)
                snap = await self.store.snapshot(self.account, command.mailbox)
        except NoSuchFolder:
            return Outcome("NO", "Mailbox does not exist.", "NONEXISTENT",
                           session=Authenticated(self.account))
        if params.condstore or params.qresync is not None:
            self.enabled = self.enabled | {cs.CONDSTORE}  # RFC 7162 §3.1.8
        view = MailboxView(command.mailbox, readonly=readonly, uidvalidity=snap.uidvalidity,
                           uidnext=snap.uidnext, records=snap.messages, recent=recent,
                           modseqs=snap.modseqs, highestmodseq=snap.highestmodseq)
        view.condstore = cs.CONDSTORE in self.enabled
        view.qresync = cs.QRESYNC in self.enabled
        await self.emit(view.flags_response())
        await self.emit(untagged(f"{len(view)} EXISTS"))
        await self.emit(untagged(f"{len(view.recent)} RECENT"))
        unseen = view.first_unseen()
        if unseen is not None:
            await self.emit(untagged_status("OK", f"Message {unseen} is first unseen.",
                                            response_code("UNSEEN", unseen)))
        await self.emit(untagged_status("OK", "UIDs valid.",
                                        response_code("UIDVALIDITY", snap.uidvalidity)))
        await self.emit(untagged_status("OK", "Predicted next UID.",
                                        response_code("UIDNEXT", snap.uidnext)))
        await self.emit(view.permanentflags_response())
        if view.condstore:
            # RFC 7162 §3.1.2.1 (NOMODSEQ never: every folder keeps mod-sequences).
            await self.emit(view.highestmodseq_response())
        qresync = params.qresync
        if qresync is not None and qresync.uidvalidity == snap.uidvalidity:
            # RFC 7162 §3.2.5: a UIDVALIDITY that changed makes the rest meaningless.
            await imap_sync.qresync_select(self, view, qresync)
        code = "READ-ONLY" if readonly else "READ-WRITE"
        return Outcome("OK", f"{command.name} completed.", code,
                       session=Selected(self.account, view))

    # -- selected state -------------------------------------------------------------------

    async def _cmd_close(self, command: g.CommandType) -> Outcome:
        view = self._selected()
        if not view.readonly:
            # RFC 3501 §6.4.2: expunge silently (no untagged EXPUNGE).
            with contextlib.suppress(NoSuchFolder):
                await self.store.expunge(self.account, view.folder)
        return Outcome("OK", "CLOSE completed.", session=Authenticated(self.account))

    async def _cmd_unselect(self, command: g.CommandType) -> Outcome:
        # RFC 3691: like CLOSE without the expunge.
        return Outcome("OK", "UNSELECT completed.", session=Authenticated(self.account))

    async def _cmd_expunge(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Expunge)
        view = self._selected()
        if view.readonly:
            return Outcome("NO", "Mailbox is read-only.")
        uids = None if command.uids is None else command.uids.select_uids(view.uids)
        removed = await self.store.expunge(self.account, view.folder, uids)
        for line in view.expunge(removed):
            await self.emit(line)
        if view.qresync:
            return Outcome("OK", "EXPUNGE completed.",
                           await imap_sync.expunged_highestmodseq(self, view))
        return Outcome("OK", "EXPUNGE completed.")

    def _bad_numbers(self, numbers: SequenceSet, uid: bool) -> bool:
        """RFC 3501 §9 seq-number: numbers above the mailbox size are invalid ("*" and
        ranges reaching it are not)."""
        return not uid and not numbers.uses_star and \
            numbers.highest_explicit > len(self._selected())

    async def _cmd_search(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Search)
        with_modseq = imap_sync.uses_modseq(command.key)
        if with_modseq:
            await imap_sync.enable_condstore(self)
        try:
            hits = await imap_search.search(self._selected(), command.key, uid=command.uid,
                                            parts=self.part_batches)
        except TooExpensive as exc:
            log.info("conn=%s SEARCH stopped after %s", self.conn_id, exc)
            # RFC 5530 §3 LIMIT; nothing else changed, the session goes on.
            return Outcome("NO", "SEARCH too expensive, narrow it down.", "LIMIT")
        await self.emit(imap_sync.search_response(self._selected(), command.tag, hits,
                                                  uid=command.uid, returns=command.returns,
                                                  with_modseq=with_modseq))
        return Outcome("OK", "SEARCH completed.")

    async def _cmd_store(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Store)
        view = self._selected()
        if self._bad_numbers(command.sequence_set, command.uid):
            return Outcome("BAD", "No such message sequence number.")
        if view.readonly:
            return Outcome("NO", "Mailbox is read-only.")
        pairs = view.resolve(command.sequence_set, uid=command.uid)
        flags = [f for f in command.flags if f != RECENT]  # \Recent is the server's
        uids = [u for _, u in pairs if u not in view.gone]
        modified: list[int] = []
        if command.unchangedsince is not None:
            await imap_sync.enable_condstore(self)
            uids, modified = await imap_sync.unchanged_since(self, view, uids,
                                                             command.unchangedsince)
        result = await self.store.store_flags(self.account, view.folder, uids,
                                              _STORE_MODES[command.mode], flags) \
            if uids else {}
        # A change gets its MODSEQ when a snapshot first sees it: look, so the FETCH
        # responses carry the new value (RFC 7162 §3.1.3).
        fresh = await imap_sync.fresh_modseqs(self, view) if view.condstore and result \
            else {}
        # RFC 3501 §7.2.6: a keyword new to the mailbox is announced (FLAGS, PERMANENTFLAGS)
        # before any FETCH shows it, .SILENT or not.
        for line in view.announce(result.values()):
            await self.emit(line)
        clock = Slices()
        clock.start()
        for seq, uid in pairs:
            if uid not in result:
                continue
            view.set_flags(uid, result[uid], fresh.get(uid))
            answer = imap_sync.store_response(view, seq, uid, silent=command.silent,
                                              with_uid=command.uid)
            if answer is not None:
                await self.emit(answer)
                if clock.due():
                    await clock.pause()
        if view.condstore and result:
            for line in view.floor_response():  # RFC 7162 §3.2 (expunges held back)
                await self.emit(line)
        if modified:
            # RFC 7162 §3.1.3: the messages not stored because they changed meanwhile, as
            # UIDs for UID STORE and sequence numbers otherwise.
            numbers = modified if command.uid else [n for u in modified
                                                    if (n := view.seq_of(u)) is not None]
            return Outcome("OK", "Conditional STORE failed.",
                           f"MODIFIED {compress(sorted(numbers))}")
        return Outcome("OK", "STORE completed.")

    async def _cmd_copy(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Copy)
        view = self._selected()
        if self._bad_numbers(command.sequence_set, command.uid):
            return Outcome("BAD", "No such message sequence number.")
        uids = [u for _, u in view.resolve(command.sequence_set, uid=command.uid)
                if u not in view.gone]
        if not await self.store.folder_exists(self.account, command.mailbox):
            raise NoSuchFolder("Mailbox does not exist.")
        if not uids:
            return Outcome("OK", "COPY completed.")
        await imap_quota.check(self, sum(view.records[u].size for u in uids), len(uids))
        mapping = await self.store.copy(self.account, view.folder, uids, command.mailbox)
        if not mapping:
            return Outcome("OK", "COPY completed.")
        validity = await self.store.uidvalidity(self.account, command.mailbox)
        sources = sorted(mapping)
        # RFC 4315 §3: COPYUID uidvalidity source-set dest-set, in corresponding order.
        code = (f"COPYUID {validity} {uid_set(sources)} "
                f"{uid_set([mapping[s] for s in sources])}")
        return Outcome("OK", "COPY completed.", code)


# RFC 3501 §6: the store commands, by name (habit 2: dispatch is a table; the machine
# answers the others itself and checks the state table before any of these runs).
HANDLERS: dict[str, Callable[[ImapExecutor, g.CommandType], Awaitable[Outcome]]] = {
    "NOOP": ImapExecutor._cmd_noop,
    "CHECK": ImapExecutor._cmd_check,
    "SELECT": ImapExecutor._cmd_select,
    "EXAMINE": ImapExecutor._cmd_examine,
    "CREATE": imap_folders.cmd_create,
    "DELETE": imap_folders.cmd_delete,
    "RENAME": imap_folders.cmd_rename,
    "SUBSCRIBE": imap_folders.cmd_subscribe,
    "UNSUBSCRIBE": imap_folders.cmd_unsubscribe,
    "LIST": imap_folders.cmd_list,
    "LSUB": imap_folders.cmd_lsub,
    "STATUS": imap_folders.cmd_status,
    "APPEND": imap_append.cmd_append,
    "CLOSE": ImapExecutor._cmd_close,
    "UNSELECT": ImapExecutor._cmd_unselect,
    "EXPUNGE": ImapExecutor._cmd_expunge,
    "SEARCH": ImapExecutor._cmd_search,
    "FETCH": imap_fetch.cmd_fetch,
    "STORE": ImapExecutor._cmd_store,
    "COPY": ImapExecutor._cmd_copy,
    "MOVE": imap_move.cmd_move,  # RFC 6851
    "GETQUOTA": imap_quota.cmd_getquota,  # RFC 9208
    "GETQUOTAROOT": imap_quota.cmd_getquotaroot,
}

