"""The folder commands: LIST with its extensions, CREATE with a special use, DELETE, RENAME,
(UN)SUBSCRIBE, LSUB, STATUS, and the folders a new account gets.

    LIST                 RFC 3501 §6.3.8, plus special-use attributes (RFC 6154 §2)
    LIST (...) ... RETURN (...)   RFC 5258 LIST-EXTENDED: selection options SUBSCRIBED,
                         REMOTE, RECURSIVEMATCH, SPECIAL-USE; return options SUBSCRIBED,
                         CHILDREN, SPECIAL-USE, STATUS (RFC 5819 LIST-STATUS); several
                         patterns; \\NonExistent, \\Subscribed, CHILDINFO
    CREATE x (USE (...)) RFC 6154 §3 CREATE-SPECIAL-USE

The handlers take the executor (server/imap_commands.py) and use its store and output
channel; the executor's HANDLERS table points here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailkeep.config.model import SpecialUseConfig
from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap import listing, specialuse
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.mailboxview import SEEN
from mailkeep.proto.imap.mutf7 import InvalidMailboxName
from mailkeep.proto.imap.render import untagged
from mailkeep.proto.imap.values import Atom, Value
from mailkeep.server import imap_sync
from mailkeep.store.base import FolderExists, FolderInfo, StoreError, StoreRefusal
from mailkeep.store.names import parent_names
from mailkeep.store.quota import Quota

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor

log = logging.getLogger("mailkeep.imap")
DELETED = "\\Deleted"

# RFC 6154 §2: uses we can give a real folder (\All and \Flagged are virtual mailboxes).
SUPPORTED_USES = frozenset(specialuse.USES)


@dataclass(frozen=True, slots=True)
class ImapOptions:
    """Per-daemon settings the executor needs for the extensions."""

    quota: Quota = field(default_factory=Quota)
    special_use: SpecialUseConfig = field(default_factory=SpecialUseConfig)


@dataclass(slots=True)
class _Entry:
    name: str
    attributes: list[Value]
    childinfo: bool = False
    status: bool = False  # selectable and matched: RFC 5819 wants a STATUS after it


async def special_uses(ex: ImapExecutor, folders: list[FolderInfo]) -> dict[str, list[str]]:
    """Folder -> special uses (RFC 6154), from what clients gave and from folder names."""
    explicit = await ex.store.special_uses(ex.account)
    return specialuse.resolve([f.name for f in folders if f.selectable], explicit,
                              ex.options.special_use.names)


async def provision(ex: ImapExecutor) -> None:
    """Once per account (the store keeps the mark): create a folder for every special use
    no folder has yet, named by the first configured name, and subscribe it. A folder that
    exists under that name (\\Noselect, say) is left as it is; one the user deletes later is
    not made again."""
    config = ex.options.special_use
    if not config.create or not await ex.store.claim_provisioning(ex.account):
        return
    folders = await ex.store.list_folders(ex.account)
    assigned = await special_uses(ex, folders)
    for use in specialuse.missing(assigned):
        name = config.names[use][0]
        try:
            created = await ex.store.create_folder(ex.account, name)
        except FolderExists:
            continue
        except (StoreRefusal, StoreError) as exc:
            log.warning("conn=%s could not create %s folder %r: %s", ex.conn_id, use, name, exc)
            continue
        await ex.store.subscribe(ex.account, created)
        log.info("conn=%s created %s folder %r for %s", ex.conn_id, use, created, ex.account)


async def cmd_list(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.ListMailboxes)
    if not ex.provisioned:
        ex.provisioned = True
        await provision(ex)
    options = command.options
    # A pattern that is not modified UTF-7 (or UTF-8 after UTF8=ACCEPT) matches nothing
    # (RFC 3501 §6.3.8; the first one is handled before we get here).
    patterns = [p for p in (command.patterns or (command.pattern,))
                if p != "" and not isinstance(p, InvalidMailboxName)]
    if not patterns:
        if any(p for p in (command.patterns or (command.pattern,))):
            return Outcome("OK", "LIST completed.")  # only invalid names: nothing matches
        # RFC 3501 §6.3.8 (and RFC 5258 §3 for an extended LIST): the hierarchy delimiter
        # and the root name.
        await ex.emit(untagged("LIST", [Atom("\\Noselect")], listing.DELIMITER, ""))
        return Outcome("OK", "LIST completed.")
    regexes = [listing.compile_pattern(listing.canonical_pattern(command.reference, p))
               for p in patterns]

    def matches(name: str) -> bool:
        return any(listing.matches(r, name) for r in regexes)

    folders = await ex.store.list_folders(ex.account)
    uses = await special_uses(ex, folders)
    entries = (_plain(folders, uses, matches) if options is None
               else await _extended(ex, options, folders, uses, matches))
    for entry in entries:
        data: list[Value] = [entry.attributes, listing.DELIMITER, ex.wire_name(entry.name)]
        if entry.childinfo:
            # RFC 5258 §4: mbox-list-extended-item CHILDINFO, quoted as in its examples.
            data.append(["CHILDINFO", ["SUBSCRIBED"]])
        await ex.emit(untagged("LIST", *data))
        if entry.status and options is not None and options.status:
            await _status(ex, command.tag, entry.name, options.status)
    return Outcome("OK", "LIST completed.")


def _plain(folders: list[FolderInfo], uses: dict[str, list[str]],
           matches: Callable[[str], bool]) -> list[_Entry]:
    """RFC 3501 LIST: \\Noselect for implied parents, RFC 3348 children, RFC 6154 uses."""
    out: list[_Entry] = []
    for folder in folders:
        if not matches(folder.name):
            continue
        attributes: list[Value] = [] if folder.selectable else [Atom("\\Noselect")]
        attributes.append(Atom("\\HasChildren" if folder.has_children else "\\HasNoChildren"))
        attributes += [Atom(u) for u in uses.get(folder.name, ())]
        out.append(_Entry(folder.name, attributes))
    return out


async def _extended(ex: ImapExecutor, options: ext.ListOptions, folders: list[FolderInfo],
                    uses: dict[str, list[str]],
                    matches: Callable[[str], bool]) -> list[_Entry]:
    """RFC 5258 §3: select, then say what was asked about each mailbox."""
    info = {f.name: f for f in folders}
    subscribed: list[str] = []
    if options.selects("SUBSCRIBED") or options.wants("SUBSCRIBED"):
        subscribed = await ex.store.subscriptions(ex.account)
    subscribed_set = set(subscribed)
    # RFC 5258 §3.1: SUBSCRIBED selects subscribed names, whether the mailboxes exist or not.
    candidates = list(subscribed) if options.selects("SUBSCRIBED") else [f.name for f in folders]
    if options.selects("SPECIAL-USE"):
        candidates = [n for n in candidates if n in uses]  # RFC 6154 §2
    chosen = {n for n in candidates if matches(n)}
    # RFC 5258 §3.5 RECURSIVEMATCH: a mailbox that matches the pattern is also returned
    # (with CHILDINFO) when one of its descendants meets the selection criteria but is not
    # returned itself because the pattern does not match it ("%" hides "Foo.Bar").
    parents: set[str] = set()
    if options.selects("RECURSIVEMATCH"):
        for name in candidates:
            if name not in chosen:
                parents.update(parent_names(name))
    names = chosen | {p for p in parents if matches(p)}

    with_children = {p for n in info for p in parent_names(n)}

    out: list[_Entry] = []
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        folder = info.get(name)
        attributes: list[Value] = []
        exists = folder is not None and folder.selectable
        if not exists:
            # RFC 5258 §3.4: a name with no mailbox (only subscribed, or only implied by a
            # Maildir++ folder under it) is \NonExistent (which implies \Noselect).
            attributes.append(Atom("\\NonExistent"))
        if options.wants("CHILDREN"):
            attributes.append(Atom("\\HasChildren" if name in with_children
                                   else "\\HasNoChildren"))
        if options.wants("SUBSCRIBED") and name in subscribed_set:
            attributes.append(Atom("\\Subscribed"))
        attributes += [Atom(u) for u in uses.get(name, ())]
        out.append(_Entry(name, attributes, childinfo=name in parents,
                          status=exists and name in chosen))
    return out


async def _status(ex: ImapExecutor, tag: str, name: str, items: tuple[str, ...]) -> None:
    """RFC 5819 §2: the mailbox's STATUS right after its LIST (nothing if it has gone)."""
    try:
        await cmd_status(ex, g.Status(tag, name, items))
    except StoreRefusal:
        return


async def cmd_create(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Create)
    # RFC 3501 §6.3.3: a trailing delimiter only says inferiors will follow.
    name = command.mailbox.rstrip(listing.DELIMITER)
    if not name:
        return Outcome("NO", "Invalid mailbox name.")
    if name.upper() == "INBOX":
        return Outcome("NO", "INBOX always exists.", "ALREADYEXISTS")
    uses = command.uses or ()
    unsupported = [u for u in uses if u not in SUPPORTED_USES]
    if unsupported:
        # RFC 6154 §3: nothing is created, and USEATTR says why.
        return Outcome("NO", f"Special use {unsupported[0]} is not supported here.",
                       "USEATTR")
    created = await ex.store.create_folder(ex.account, name)
    if uses:
        try:
            await ex.store.set_special_use(ex.account, created, uses)
        except (StoreRefusal, StoreError):
            # RFC 6154 §3: "MUST NOT create the mailbox" if the use cannot be given.
            await ex.store.delete_folder(ex.account, created)
            raise
    return Outcome("OK", "CREATE completed.")


# -- the folder commands of RFC 3501 §6.3 ---------------------------------------------------


async def cmd_delete(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Delete)
    await ex.store.delete_folder(ex.account, command.mailbox)
    return Outcome("OK", "DELETE completed.")


async def cmd_rename(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Rename)
    await ex.store.rename_folder(ex.account, command.mailbox,
                                   command.new_name.rstrip(listing.DELIMITER))
    return Outcome("OK", "RENAME completed.")


async def cmd_subscribe(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Subscribe)
    await ex.store.subscribe(ex.account, command.mailbox)
    return Outcome("OK", "SUBSCRIBE completed.")


async def cmd_unsubscribe(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Unsubscribe)
    if not await ex.store.unsubscribe(ex.account, command.mailbox):
        return Outcome("NO", "Not subscribed to that name.")
    return Outcome("OK", "UNSUBSCRIBE completed.")


async def cmd_lsub(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Lsub)
    if command.pattern == "":
        await ex.emit(untagged("LSUB", [Atom("\\Noselect")], listing.DELIMITER, ""))
        return Outcome("OK", "LSUB completed.")
    regex = listing.compile_pattern(listing.canonical_pattern(command.reference,
                                                              command.pattern))
    subscribed = await ex.store.subscriptions(ex.account)
    shown = set(subscribed)
    for name in subscribed:
        if listing.matches(regex, name):
            await ex.emit(untagged("LSUB", [], listing.DELIMITER, ex.wire_name(name)))
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
                await ex.emit(untagged("LSUB", [Atom("\\Noselect")], listing.DELIMITER,
                                         ex.wire_name(parent)))
                break
    return Outcome("OK", "LSUB completed.")


async def cmd_status(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Status)
    snap = await ex.store.snapshot(ex.account, command.mailbox)
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
        await imap_sync.enable_condstore(ex)
    data: list[Value] = []
    for item in command.items:
        data += [Atom(item), values[item]]
    await ex.emit(untagged("STATUS", ex.wire_name(command.mailbox), data))
    return Outcome("OK", "STATUS completed.")
