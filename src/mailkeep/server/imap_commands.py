"""The IMAP executor: runs the commands the machine hands over (events.Execute) against the
store, for one authenticated session.

proto/imap/machine.py explains the split: the machine frames, parses, checks the state
table and does the dialogues; this module does the store calls, with the pure helpers of
proto/imap (mailboxview, fetch, listing, search, render) deciding what to say. Untagged
data goes out through `write` as it is made (a FETCH of 10,000 messages is never held in
memory whole); the tagged line is returned to the driver for machine.executed().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence, Set
from dataclasses import replace

from mailkeep.proto.imap import condstore as cs
from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap import listing, mutf7
from mailkeep.proto.imap.enable import UTF8_ACCEPT
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.fetch import fetch_items, needs_message
from mailkeep.proto.imap.mailboxview import RECENT, SEEN, MailboxView, flag_atoms
from mailkeep.proto.imap.mime import MimePart, parse_message
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.proto.imap.mutf7 import InvalidMailboxName
from mailkeep.proto.imap.render import (
    fetch_response,
    response_code,
    untagged,
    untagged_status,
)
from mailkeep.proto.imap.sequence import SequenceSet, compress, uid_set
from mailkeep.proto.imap.session import Authenticated, Selected, SessionState
from mailkeep.proto.imap.values import Atom, Value
from mailkeep.server import (
    imap_append,
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
    MessageGone,
    NoSuchFolder,
    OverQuota,
    StoreError,
    StoreRefusal,
)

log = logging.getLogger("mailkeep.imap")
DELETED = "\\Deleted"

# Untagged data is handed to the transport in batches of about this many octets, with a
# drain in between, so a slow reader holds at most this much of a long FETCH in memory.
FLUSH_OCTETS = 256 * 1024
# Messages at least this large are parsed in a worker thread, off the event loop.
PARSE_OFF_LOOP_OCTETS = 256 * 1024
# SEARCH and FETCH read the messages they need in batches of at most this many messages and
# about this many octets: one trip to the store's threads per batch, not per message.
READ_BATCH_MESSAGES = 64
READ_BATCH_OCTETS = 2 * 1024 * 1024
# Our choice: the message data (BODY[...], RFC822, ...) in one message's FETCH response may
# total at most this many times the message's size plus FETCH_SLACK_OCTETS. BODY[] with
# BODY[HEADER] and BODY[TEXT] is about twice; "BODY[]<0> BODY[]<1> BODY[]<2> ..." (some
# 2,000 partials fit a 64 KB command line) would otherwise build one response of 2,000
# copies in memory. Past it: NO [LIMIT] (RFC 5530 §3) for the rest of the FETCH.
MAX_FETCH_COPIES = 4
FETCH_SLACK_OCTETS = 1024 * 1024
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
        await self.flush()
        return outcome

    @staticmethod
    def should_sync(command: g.CommandType, session: Selected) -> bool:
        """Does the end of this command need a look at the mailbox? When the change feed
        says someone changed it, or the client asked (NOOP, CHECK: how clients poll), or the
        command itself changed it; a session with no feed subscription always looks."""
        if isinstance(command, g.Noop | g.Check | g.Store | g.Copy | g.Append | g.Expunge):
            return True
        # Expunges held back during a FETCH/STORE/SEARCH (RFC 3501 §7.4.1) are told at the
        # first command that allows them.
        return session.watch is None or session.watch.pending() or bool(session.view.gone)

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
        try:
            snap = await self.store.snapshot(self.account, view.folder)
        except NoSuchFolder:
            await self.emit(untagged_status("BYE", "The selected mailbox was deleted."))
            session.leave()
            return "selected mailbox deleted"
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

    async def part(self, uid: int) -> MimePart:
        """The parsed message (cached per folder + UIDVALIDITY + UID). MessageGone."""
        view = self.view
        assert view is not None
        key = (self.account, view.folder, view.uidvalidity, uid)
        found = self.cache.get(key)
        if found is not None:
            return found
        data = await self.store.read_message(self.account, view.folder,
                                             view.records[uid].key)
        if len(data) >= PARSE_OFF_LOOP_OCTETS:
            parsed = await asyncio.to_thread(parse_message, data)
        else:
            parsed = parse_message(data)
        self.cache.put(key, parsed)
        return parsed

    async def parts(self, uids: Sequence[int]) -> AsyncGenerator[MimePart | None, None]:
        """part() of each UID in turn (None: expunged by someone else), the uncached ones
        read in batches (READ_BATCH_*); large messages still go one by one."""
        view = self._selected()
        start = 0
        while start < len(uids):
            chunk: list[int] = []
            octets = 0
            while start < len(uids) and len(chunk) < READ_BATCH_MESSAGES \
                    and octets < READ_BATCH_OCTETS:
                chunk.append(uids[start])
                octets += view.records[uids[start]].size
                start += 1
            ready: dict[int, MimePart | None] = {}
            wanted: list[int] = []
            for uid in chunk:
                found = self.cache.get((self.account, view.folder, view.uidvalidity, uid))
                if found is not None:
                    ready[uid] = found
                elif view.records[uid].size < PARSE_OFF_LOOP_OCTETS:
                    wanted.append(uid)
            if wanted:
                data = await self.store.read_messages(
                    self.account, view.folder, [view.records[u].key for u in wanted])
                for uid, octets_read in zip(wanted, data, strict=True):
                    if octets_read is None:
                        ready[uid] = None
                        continue
                    parsed = parse_message(octets_read)
                    self.cache.put((self.account, view.folder, view.uidvalidity, uid), parsed)
                    ready[uid] = parsed
            for uid in chunk:
                if uid in ready:
                    yield ready[uid]
                    continue
                try:
                    yield await self.part(uid)
                except MessageGone:
                    yield None

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

    async def _cmd_delete(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Delete)
        await self.store.delete_folder(self.account, command.mailbox)
        return Outcome("OK", "DELETE completed.")

    async def _cmd_rename(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Rename)
        await self.store.rename_folder(self.account, command.mailbox,
                                       command.new_name.rstrip(listing.DELIMITER))
        return Outcome("OK", "RENAME completed.")

    async def _cmd_subscribe(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Subscribe)
        await self.store.subscribe(self.account, command.mailbox)
        return Outcome("OK", "SUBSCRIBE completed.")

    async def _cmd_unsubscribe(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Unsubscribe)
        if not await self.store.unsubscribe(self.account, command.mailbox):
            return Outcome("NO", "Not subscribed to that name.")
        return Outcome("OK", "UNSUBSCRIBE completed.")

    async def _cmd_lsub(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Lsub)
        if command.pattern == "":
            await self.emit(untagged("LSUB", [Atom("\\Noselect")], listing.DELIMITER, ""))
            return Outcome("OK", "LSUB completed.")
        regex = listing.compile_pattern(listing.canonical_pattern(command.reference,
                                                                  command.pattern))
        subscribed = await self.store.subscriptions(self.account)
        shown = set(subscribed)
        for name in subscribed:
            if listing.matches(regex, name):
                await self.emit(untagged("LSUB", [], listing.DELIMITER, self.wire_name(name)))
                continue
            # RFC 3501 §6.3.9: with "%", a subscribed "foo.bar" under an unsubscribed "foo"
            # shows as "foo" flagged \Noselect (once), since "foo.bar" itself does not match.
            parts = name.split(listing.DELIMITER)
            for i in range(len(parts) - 1, 0, -1):
                parent = listing.DELIMITER.join(parts[:i])
                if parent in shown:
                    break
                if listing.matches(regex, parent):
                    shown.add(parent)
                    await self.emit(untagged("LSUB", [Atom("\\Noselect")], listing.DELIMITER,
                                             self.wire_name(parent)))
                    break
        return Outcome("OK", "LSUB completed.")

    async def _cmd_status(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Status)
        snap = await self.store.snapshot(self.account, command.mailbox)
        values = {
            "MESSAGES": len(snap.messages),
            "RECENT": len(snap.unclaimed),
            "UIDNEXT": snap.uidnext,
            "UIDVALIDITY": snap.uidvalidity,
            "UNSEEN": sum(1 for m in snap.messages if SEEN not in m.flags),
            "HIGHESTMODSEQ": snap.highestmodseq,  # RFC 7162 §3.1.6
            # RFC 9051 §6.3.11 DELETED; RFC 9208 §4.2 DELETED-STORAGE (in 1024 octets)
            "DELETED": sum(1 for m in snap.messages if DELETED in m.flags),
            "DELETED-STORAGE": -(-sum(m.size for m in snap.messages
                                      if DELETED in m.flags) // 1024),
        }
        if "HIGHESTMODSEQ" in command.items:
            await imap_sync.enable_condstore(self)
        data: list[Value] = []
        for item in command.items:
            data += [Atom(item), values[item]]
        await self.emit(untagged("STATUS", self.wire_name(command.mailbox), data))
        return Outcome("OK", "STATUS completed.")

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
            # RFC 7162 §3.2.7: the tagged OK of (UID) EXPUNGE carries the HIGHESTMODSEQ that
            # the expunges were given (a snapshot gives it).
            snap = await self.store.snapshot(self.account, view.folder)
            view.highestmodseq = max(view.highestmodseq, snap.highestmodseq)
            return Outcome("OK", "EXPUNGE completed.",
                           response_code("HIGHESTMODSEQ", view.highestmodseq))
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
                                            parts=self.parts)
        except TooExpensive as exc:
            log.info("conn=%s SEARCH stopped after %s", self.conn_id, exc)
            # RFC 5530 §3 LIMIT; nothing else changed, the session goes on.
            return Outcome("NO", "SEARCH too expensive, narrow it down.", "LIMIT")
        await self.emit(imap_sync.search_response(self._selected(), command.tag, hits,
                                                  uid=command.uid, returns=command.returns,
                                                  with_modseq=with_modseq))
        return Outcome("OK", "SEARCH completed.")

    async def _cmd_fetch(self, command: g.CommandType) -> Outcome:
        assert isinstance(command, g.Fetch)
        view = self._selected()
        if self._bad_numbers(command.sequence_set, command.uid):
            return Outcome("BAD", "No such message sequence number.")
        items = list(command.items)
        if command.uid and not any(i.name == "UID" for i in items):
            items.insert(0, g.FetchItem("UID"))  # RFC 3501 §6.4.8
        since = command.modifiers.changedsince
        if command.modifiers.vanished and (not command.uid or cs.QRESYNC not in self.enabled):
            # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only once QRESYNC is enabled.
            return Outcome("BAD", "VANISHED needs UID FETCH and ENABLE QRESYNC.")
        if since is not None or any(i.name == "MODSEQ" for i in items):
            await imap_sync.enable_condstore(self)
        if (since is not None or (view.condstore and any(i.name == "FLAGS" for i in items))) \
                and not any(i.name == "MODSEQ" for i in items):
            # RFC 7162 §3.1.4.1: CHANGEDSINCE answers with MODSEQ as if asked; once CONDSTORE
            # is on, FLAGS come with their MODSEQ (so a client's cache stays consistent).
            items.append(g.FetchItem("MODSEQ"))
        pairs = view.resolve(command.sequence_set, uid=command.uid)
        if since is not None:
            if command.modifiers.vanished:
                await imap_sync.vanished_earlier(self, view, command.sequence_set, since)
            pairs = [(s, u) for s, u in pairs if view.modseqs.get(u, 0) > since]
        changed: set[int] = set()
        if not view.readonly and any(i.sets_seen for i in items):
            # RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \Seen.
            unseen = [u for _, u in pairs if SEEN not in view.flags[u] and u not in view.gone]
            if unseen:
                result = await self.store.store_flags(self.account, view.folder, unseen,
                                                      FlagMode.ADD, [SEEN])
                fresh = await imap_sync.fresh_modseqs(self, view) if view.condstore else {}
                for u, flags in result.items():
                    view.set_flags(u, flags, fresh.get(u))
                changed = set(result)
        unique: dict[str, g.FetchItem] = {}
        for item in items:  # one value per response name, the first asked (fetch_items)
            unique.setdefault(item.response_name(), item)
        items = list(unique.values())
        need_message = needs_message(items)
        wants_flags = any(i.name == "FLAGS" for i in items)
        missing = 0
        parts = self.parts([u for _, u in pairs]) if need_message else None
        clock = Slices()
        clock.start()
        for seq, uid in pairs:
            record = view.records[uid]
            part = None
            if parts is not None:
                part = await anext(parts)
                if part is None:
                    missing += 1
                    continue
            values: list[tuple[str, Value]] = []
            octets, limit = 0, MAX_FETCH_COPIES * record.size + FETCH_SLACK_OCTETS
            for item in items:
                values += fetch_items([item], uid=uid, flags=view.flags_of(uid),
                                      internaldate=record.internaldate, size=record.size,
                                      part=part, modseq=view.modseqs.get(uid, 0))
                if isinstance(values[-1][1], bytes):
                    octets += len(values[-1][1])
                    if octets > limit:
                        break
            if octets > limit:
                log.info("conn=%s FETCH of UID %d refused: %d items, over %d octets",
                         self.conn_id, uid, len(items), limit)
                if parts is not None:
                    await parts.aclose()
                return Outcome("NO", "FETCH response too large, ask for "
                                      "fewer or smaller sections.", "LIMIT")
            if uid in changed and not wants_flags:
                values.append(("FLAGS", flag_atoms(view.flags_of(uid))))
                if view.condstore and not any(name == "MODSEQ" for name, _ in values):
                    values.append(cs.modseq_item(view.modseqs.get(uid, 0)))
            await self.emit(fetch_response(seq, values))
            if clock.due():  # FETCH 1:* of a big mailbox: let other sessions in
                await clock.pause()
        if view.condstore and pairs:
            for line in view.floor_response():  # RFC 7162 §3.2 (expunges held back)
                await self.emit(line)
        if missing:
            # RFC 2180 §4.1.3: some of the messages were expunged by another session.
            return Outcome("NO", "Some messages were expunged.")
        return Outcome("OK", "FETCH completed.")

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
    "DELETE": ImapExecutor._cmd_delete,
    "RENAME": ImapExecutor._cmd_rename,
    "SUBSCRIBE": ImapExecutor._cmd_subscribe,
    "UNSUBSCRIBE": ImapExecutor._cmd_unsubscribe,
    "LIST": imap_folders.cmd_list,
    "LSUB": ImapExecutor._cmd_lsub,
    "STATUS": ImapExecutor._cmd_status,
    "APPEND": imap_append.cmd_append,
    "CLOSE": ImapExecutor._cmd_close,
    "UNSELECT": ImapExecutor._cmd_unselect,
    "EXPUNGE": ImapExecutor._cmd_expunge,
    "SEARCH": ImapExecutor._cmd_search,
    "FETCH": ImapExecutor._cmd_fetch,
    "STORE": ImapExecutor._cmd_store,
    "COPY": ImapExecutor._cmd_copy,
    "MOVE": imap_move.cmd_move,  # RFC 6851
    "GETQUOTA": imap_quota.cmd_getquota,  # RFC 9208
    "GETQUOTAROOT": imap_quota.cmd_getquotaroot,
}

