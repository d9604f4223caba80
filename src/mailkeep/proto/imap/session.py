"""The IMAP session's state (RFC 3501 §3), each state carrying what belongs to it.

A session is NotAuthenticated, Authenticated (an account), Selected (an account, the
mailbox view that numbers its messages, and the change subscription that tells it what
others change) or LoggedOut. The selected mailbox lives *inside* Selected: leaving the state
drops it, so the state and the view can never disagree (a failed SELECT after a good one
once left the session "selected" with no mailbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mailkeep.proto.imap.events import State
from mailkeep.proto.imap.mailboxview import MailboxView


class Subscription(Protocol):
    """A change-feed subscription (store.changes.Watch), as the protocol layer sees it."""

    def pending(self) -> bool: ...

    def take(self) -> list[Any]: ...

    async def next(self) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class NotAuthenticated:
    pass


@dataclass(slots=True)
class Authenticated:
    account: str
    # RFC 5161 ENABLE (and RFC 7162 §3.1 CONDSTORE enabling commands): the extensions this
    # session turned on; they stay on for its life, across SELECT, CLOSE and UNSELECT.
    enabled: frozenset[str] = frozenset()


@dataclass(slots=True)
class Selected:
    account: str
    view: MailboxView
    watch: Subscription | None = None
    enabled: frozenset[str] = frozenset()  # as in Authenticated

    def leave(self) -> None:
        """The mailbox is no longer selected: stop following its changes."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None


@dataclass(slots=True)
class LoggedOut:
    pass


SessionState = NotAuthenticated | Authenticated | Selected | LoggedOut


def state_of(session: SessionState) -> State:
    if isinstance(session, Selected):
        return State.SELECTED
    if isinstance(session, Authenticated):
        return State.AUTHENTICATED
    if isinstance(session, NotAuthenticated):
        return State.NOT_AUTHENTICATED
    return State.LOGOUT


def enabled_of(session: SessionState) -> frozenset[str]:
    """What the session turned on with ENABLE (RFC 5161); nothing before login."""
    return session.enabled if isinstance(session, Authenticated | Selected) else frozenset()


def account_of(session: SessionState) -> str | None:
    return session.account if isinstance(session, Authenticated | Selected) else None
