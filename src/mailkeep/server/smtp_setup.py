"""aiosmtpd's per-connection set-up, without its per-connection introspection.

aiosmtpd's SMTP.__init__ walks inspect.getmembers() of the session and of its handler, dir()
of both, and inspect.signature() of the EHLO hook, on every connection: about 0.25 ms of CPU
per SMTP session on the bench machine (0.01 ms here; docs/benchmarks.md, issue 10), and a dict
of some 20 bound methods kept by every idle session. What it finds depends only on the
classes, so here it is found once per class, and a method is bound when aiosmtpd looks it
up. init_smtp() sets exactly the attributes SMTP.__init__ sets (tests/unit/test_smtp_setup.py
compares the two, so an aiosmtpd upgrade that adds one fails there, not in production).

It also fixes what the instance walk got wrong: an instance attribute named auth_* (ours:
auth_required) was taken for a SASL mechanism and advertised in EHLO ("AUTH LOGIN PLAIN
required"); only methods count here.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP, login_always_fail


class AuthMethod(NamedTuple):
    """What aiosmtpd reads from its mechanism table (its private _AuthMechAttr)."""

    method: Any
    is_builtin: bool


class _Tables(NamedTuple):
    smtp: dict[str, str]                     # command -> method name on the session
    auth: dict[str, tuple[str, bool]]        # mechanism -> (method name, on the session?)
    hooks: tuple[str, ...]                   # handler hook names (without handle_)
    ehlo_hook_ver: str | None


def _methods(cls: type, prefix: str) -> list[tuple[str, Any]]:
    return [(name, getattr(cls, name)) for name in dir(cls)
            if name.startswith(prefix) and callable(getattr(cls, name))]


_found: dict[tuple[type, type], _Tables] = {}


def _tables(session_cls: type, handler_cls: type) -> _Tables:
    found = _found.get((session_cls, handler_cls))
    if found is None:
        found = _found[(session_cls, handler_cls)] = _find(session_cls, handler_cls)
    return found


def _find(session_cls: type, handler_cls: type) -> _Tables:
    auth: dict[str, tuple[str, bool]] = {}
    # aiosmtpd: the handler's mechanisms win over the session's of the same name.
    for owner, builtin in ((session_cls, True), (handler_cls, False)):
        for name, func in _methods(owner, "auth_"):
            mech = getattr(func, "__auth_mechanism_name__",
                           name.replace("auth_", "").replace("__", "-"))
            auth[mech] = (name, builtin)
    ehlo_ver: str | None = None
    ehlo = getattr(handler_cls, "handle_EHLO", None)
    if ehlo is not None:
        # Unbound: `self` counts, which aiosmtpd's bound-method signature did not.
        params = len(inspect.signature(ehlo).parameters) - 1
        if params != 5:
            raise RuntimeError("handle_EHLO must take the 5-argument form")
        ehlo_ver = "new"
    return _Tables(
        smtp={name.replace("smtp_", ""): name for name, _ in _methods(session_cls, "smtp_")},
        auth=auth,
        hooks=tuple(name.replace("handle_", "") for name, _ in _methods(handler_cls, "handle_")),
        ehlo_hook_ver=ehlo_ver)


class BoundMethods(Mapping[str, Any]):
    """command -> bound method, bound on look-up (aiosmtpd's _smtp_methods)."""

    __slots__ = ("_names", "_obj")

    def __init__(self, obj: object, names: dict[str, str]) -> None:
        self._obj = obj
        self._names = names

    def __getitem__(self, key: str) -> Any:
        return getattr(self._obj, self._names[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class AuthMethods(Mapping[str, AuthMethod]):
    """mechanism -> AuthMethod, bound on look-up (aiosmtpd's _auth_methods)."""

    __slots__ = ("_handler", "_names", "_session")

    def __init__(self, session: object, handler: object,
                 names: dict[str, tuple[str, bool]]) -> None:
        self._session = session
        self._handler = handler
        self._names = names

    def __getitem__(self, key: str) -> AuthMethod:
        name, builtin = self._names[key]
        return AuthMethod(getattr(self._session if builtin else self._handler, name), builtin)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def init_smtp(smtp: SMTP, handler: Any, *, loop: asyncio.AbstractEventLoop,
              data_size_limit: int | None, enable_SMTPUTF8: bool,
              decode_data: bool, hostname: str, ident: str,
              tls_context: ssl.SSLContext | None, require_starttls: bool, timeout: float,
              auth_required: bool, auth_require_tls: bool) -> None:
    """SMTP.__init__ for the arguments server/smtp.py passes (no authenticator= callback, no
    PROXY protocol, no command call limits), with the method tables found once per class."""
    s: Any = smtp  # aiosmtpd's private attributes, set as its own __init__ sets them
    s.__ident__ = ident
    s.loop = loop
    asyncio.StreamReaderProtocol.__init__(
        smtp, asyncio.StreamReader(loop=loop, limit=smtp.line_length_limit),
        client_connected_cb=s._cb_client_connected, loop=loop)
    s.event_handler = handler
    s.data_size_limit = data_size_limit
    s.enable_SMTPUTF8 = enable_SMTPUTF8
    s._decode_data = decode_data
    smtp.command_size_limits.clear()
    s.hostname = hostname
    s.tls_context = tls_context
    s.require_starttls = tls_context and require_starttls
    s._timeout_duration = timeout
    s._timeout_handle = None
    s._tls_handshake_okay = True
    s._tls_protocol = None
    s._original_transport = None
    s.session = None
    s.envelope = None
    s.transport = None
    s._handler_coroutine = None
    s._auth_require_tls = auth_require_tls
    s._proxy_timeout = None
    s._authenticator = None
    s._auth_callback = login_always_fail
    s._auth_required = auth_required
    tables = _tables(type(smtp), type(handler))
    s._auth_methods = AuthMethods(smtp, handler, tables.auth)
    s._handle_hooks = {name: getattr(handler, "handle_" + name) for name in tables.hooks}
    s._ehlo_hook_ver = tables.ehlo_hook_ver
    s._smtp_methods = BoundMethods(smtp, tables.smtp)
    s._enforce_call_limit = False

