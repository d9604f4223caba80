"""server/smtp_setup.init_smtp() sets what aiosmtpd's own SMTP.__init__ sets, so skipping the
latter (its per-connection introspection) loses nothing, on this aiosmtpd and the next."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, auth_mechanism

from mailkeep.server import smtp_setup


class Handler:
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        return responses

    async def handle_exception(self, error: Exception) -> str:
        return "451"

    @auth_mechanism("X-TOKEN")
    async def auth_XTOKEN(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


class Session_(SMTP):
    def __init__(self, fast: bool, handler: Handler, **kw: Any) -> None:
        # An instance attribute named like a mechanism: not a mechanism (see smtp_setup).
        self.auth_required_here = True
        if fast:
            smtp_setup.init_smtp(self, handler, **kw)
        else:
            super().__init__(handler, **kw)

    async def smtp_XEXTRA(self, arg: str) -> None:
        await self.push("250 extra")

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return AuthResult(success=False)


def _kwargs(loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext | None) -> dict[str, Any]:
    return {"loop": loop, "data_size_limit": 1234, "enable_SMTPUTF8": True,
            "decode_data": False, "hostname": "mx.example.test", "ident": "ESMTP test",
            "tls_context": tls, "require_starttls": True, "timeout": 42.0,
            "auth_required": True, "auth_require_tls": True}


def _compare(tls: ssl.SSLContext | None) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        slow = Session_(False, handler, **_kwargs(loop, tls))
        fast = Session_(True, handler, **_kwargs(loop, tls))
        a, b = vars(slow), vars(fast)
        assert sorted(a) == sorted(b)
        tables = {"_auth_methods", "_smtp_methods", "_handle_hooks"}
        streams = {"_stream_reader_wr", "_stream_reader", "_closed", "_strong_reader",
                   "_task"}
        for key in a.keys() - tables - streams:
            if key.startswith("_stream") or callable(a[key]):
                assert (a[key] is None) == (b[key] is None), key
                continue
            assert a[key] == b[key], key
        assert fast._stream_reader._limit == slow._stream_reader._limit  # type: ignore[attr-defined]
        # The same functions, bound to each its own session.
        assert {k: (m.__func__, m.__self__) for k, m in fast._smtp_methods.items()} == \
            {k: (m.__func__, fast) for k, m in slow._smtp_methods.items()}
        assert "XEXTRA" in fast._smtp_methods
        assert b["_handle_hooks"] == a["_handle_hooks"]  # the same handler's methods
        # aiosmtpd's walk of the instance took the attribute for a mechanism; we do not.
        assert set(slow._auth_methods) - set(fast._auth_methods) == {"required_here"}
        for mech in fast._auth_methods:
            mine, theirs = fast._auth_methods[mech], slow._auth_methods[mech]
            assert mine.is_builtin == theirs.is_builtin, mech
            assert mine.method.__func__ is theirs.method.__func__, mech
            assert mine.method.__self__ is (fast if mine.is_builtin else handler), mech
        assert {"PLAIN", "LOGIN", "X-TOKEN"} <= set(fast._auth_methods)

    asyncio.run(run())


def test_init_smtp_matches_aiosmtpd_without_tls() -> None:
    _compare(None)


def test_init_smtp_matches_aiosmtpd_with_starttls() -> None:
    _compare(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
