"""CONDSTORE and QRESYNC (RFC 7162) and ESEARCH (RFC 4731) for the IMAP executor.

server/imap_commands.py runs the commands; the parts these extensions add, which need the
store, live here so that module stays about RFC 3501:

    await enable_condstore(executor)            a CONDSTORE enabling command (§3.1)
    await qresync_select(executor, view, q)     SELECT ... (QRESYNC ...) (§3.2.5)
    await vanished_earlier(executor, ...)       UID FETCH ... (CHANGEDSINCE n VANISHED) (§3.2.6)
    await fresh_modseqs(executor, view)         the MODSEQs our own change was given
    await conditional_store(...)                STORE ... (UNCHANGEDSINCE n) (§3.1.3)
    search_response(...)                        SEARCH / ESEARCH lines, MODSEQ included

MODSEQs come from store snapshots: a change gets its mod-sequence the first time a snapshot
sees it (store/maildir/modseq.py), so after this session's own STORE a snapshot is taken
before answering, and the FETCH responses carry the new value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mailkeep.proto.imap import condstore as cs
from mailkeep.proto.imap.mailboxview import MailboxView, flags_value
from mailkeep.proto.imap.render import fetch_response, response_code, untagged
from mailkeep.proto.imap.search import Modseq, SearchKey, leaves
from mailkeep.proto.imap.sequence import MAX_NUMBER, SequenceSet
from mailkeep.proto.imap.values import Atom, Value

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor


async def enable_condstore(ex: ImapExecutor) -> None:
    """RFC 7162 §3.1: a CONDSTORE enabling command (SELECT/EXAMINE (CONDSTORE), FETCH
    MODSEQ or CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ)
    turns CONDSTORE on for the rest of the session. When that happens with a mailbox
    selected, the client learns its HIGHESTMODSEQ at once (as Dovecot does), and from then
    on FETCH responses carry MODSEQ."""
    if cs.CONDSTORE in ex.enabled:
        return
    ex.enabled = ex.enabled | {cs.CONDSTORE}
    view = ex.view
    if view is not None and not view.condstore:
        view.condstore = True
        await ex.emit(view.highestmodseq_response())


async def expunged_highestmodseq(ex: ImapExecutor, view: MailboxView) -> str:
    """RFC 7162 §3.2.7 (and RFC 6851 §4.4 for MOVE): with QRESYNC on, the tagged OK of a
    command that expunged carries the HIGHESTMODSEQ its expunges were given; a snapshot
    gives it. The response code."""
    snap = await ex.store.snapshot(ex.account, view.folder)
    view.highestmodseq = max(view.highestmodseq, snap.highestmodseq)
    return response_code("HIGHESTMODSEQ", view.highestmodseq)


async def fresh_modseqs(ex: ImapExecutor, view: MailboxView) -> Mapping[int, int]:
    """The MODSEQs as of now: a snapshot, which gives this session's own change its
    mod-sequence (RFC 7162 §3.1.3: the FETCH after a STORE carries the new value)."""
    snap = await ex.store.snapshot(ex.account, view.folder)
    return snap.modseqs


async def qresync_select(ex: ImapExecutor, view: MailboxView, q: cs.Qresync) -> None:
    """RFC 7162 §3.2.5, after the SELECT/EXAMINE responses, when the client's UIDVALIDITY
    still holds: "* VANISHED (EARLIER)" for what was expunged since its mod-sequence, then
    "* n FETCH (UID u FLAGS (...) MODSEQ (m))" for every message changed since, both within
    its known UIDs when it gave them."""
    logged, complete = await ex.store.vanished_since(ex.account, view.folder, q.modseq)
    spans = cs.earlier_vanished(logged=logged, complete=complete, current=view.uids,
                                uidnext=view.uidnext, known=q.known_uids,
                                floor=cs.known_floor(q.seq_match, view.uids))
    if spans:
        await ex.emit(cs.vanished_response(cs.spans_text(spans), earlier=True))
    for seq, uid in enumerate(view.uids, 1):
        modseq = view.modseqs.get(uid, 0)
        if modseq <= q.modseq:
            continue
        if q.known_uids is not None and not q.known_uids.contains(uid, MAX_NUMBER):
            continue
        await ex.emit(fetch_response(seq, [("UID", uid),
                                           ("FLAGS", flags_value(view.flags_of(uid))),
                                           cs.modseq_item(modseq)]))


async def vanished_earlier(ex: ImapExecutor, view: MailboxView, uids: SequenceSet,
                           since: int) -> None:
    """RFC 7162 §3.2.6 UID FETCH ... (CHANGEDSINCE n VANISHED): the UIDs of the set expunged
    since n, before the FETCH responses. UIDs this session still numbers (expunged by
    someone else, EXPUNGE not yet sent) are left for the VANISHED that will follow."""
    logged, complete = await ex.store.vanished_since(ex.account, view.folder, since)
    spans = cs.earlier_vanished(logged=logged, complete=complete, current=view.uids,
                                uidnext=view.uidnext, known=uids, floor=0)
    if spans:
        await ex.emit(cs.vanished_response(cs.spans_text(spans), earlier=True))


async def unchanged_since(ex: ImapExecutor, view: MailboxView, uids: Sequence[int],
                          limit: int) -> tuple[list[int], list[int]]:
    """RFC 7162 §3.1.3 UNCHANGEDSINCE: (the UIDs that may be stored, the UIDs whose
    mod-sequence is above `limit` now and so fail). The mod-sequences are read from a fresh
    snapshot, so a change nobody has looked at yet counts too.

    DEVIATION (RFC 7162 §3.1.3): the test and the store are two steps, not one atomic
    operation; a flag change made by another session or process between them (the window is
    one store call) is overwritten as if it had come just before the test."""
    current = await fresh_modseqs(ex, view)
    ok: list[int] = []
    failed: list[int] = []
    for uid in uids:
        (failed if current.get(uid, view.modseqs.get(uid, 0)) > limit else ok).append(uid)
    return ok, failed


def store_response(view: MailboxView, seq: int, uid: int, *, silent: bool,
                   with_uid: bool) -> bytes | None:
    """The FETCH a STORE answers with: FLAGS (unless .SILENT), UID for UID STORE, and
    MODSEQ once CONDSTORE is on -- even with .SILENT (RFC 7162 §3.1.3: the client's cache
    needs the new mod-sequence; the RFC's example answers "* 5 FETCH (MODSEQ (...))")."""
    if silent and not view.condstore:
        return None
    values: list[tuple[str, Value]] = []
    if not silent:
        values.append(("FLAGS", flags_value(view.flags_of(uid))))
    if with_uid:
        values.append(("UID", uid))
    if view.condstore:
        values.append(cs.modseq_item(view.modseqs.get(uid, 0)))
    return fetch_response(seq, values)


def uses_modseq(key: SearchKey) -> bool:
    return any(isinstance(k, Modseq) for k in leaves(key))


def search_response(view: MailboxView, tag: str, hits: Sequence[int], *, uid: bool,
                    returns: tuple[str, ...] | None, with_modseq: bool) -> bytes:
    """SEARCH (RFC 3501 §7.2.5) or ESEARCH (RFC 4731 §3.1, when RETURN was given); with
    a MODSEQ criterion, the highest MODSEQ of what is reported (RFC 7162 §3.1.5: "* SEARCH
    2 5 6 (MODSEQ 917162500)", left out when nothing matched)."""
    modseq: int | None = None
    if with_modseq and hits:
        by_hit = {h: view.modseqs.get(h if uid else view.uids[h - 1], 0) for h in hits}
        modseq = cs.search_modseq(hits, returns, by_hit)
    if returns is not None:
        return cs.esearch_response(tag, hits, returns, uid=uid, modseq=modseq)
    values: list[Value] = list(hits)
    if modseq is not None:
        values.append([Atom("MODSEQ"), modseq])
    return untagged("SEARCH", *values)
