"""The autoconfig listener: account autoconfiguration documents over HTTP (server/http.py).

It serves the documents of proto/autoconfig.py at the paths of proto/autoconfig_routes.py
and nothing else, plain HTTP (Thunderbird fetches http://autoconfig.DOMAIN/ first-hand) or
HTTPS with the configured certificate; ACME HTTP-01 challenges are answered here too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from mailkeep.config.model import Config, ListenerConfig
from mailkeep.proto.autoconfig import MailSetup, doors
from mailkeep.proto.autoconfig_routes import answer
from mailkeep.proto.http import Answer, Request
from mailkeep.server import http
from mailkeep.server.http import HttpSession
from mailkeep.server.listener import Slot
from mailkeep.server.services import Services
from mailkeep.tls.acme import acme_http01_response

log = logging.getLogger("mailkeep.autoconfig")

SetupSource = Callable[[], MailSetup]


def mail_setup(config: Config, bound: dict[str, list[str]] | None = None) -> MailSetup:
    """What the autoconfig documents advertise: config.hostname, the local domains, and the
    mail doors that are configured. A listener bound to port 0 (tests) is advertised with the
    port it actually got (`bound`: listener name -> "host:port" addresses, Daemon.bound)."""
    found: list[tuple[str, str, int]] = []
    for lst in config.listeners:
        actual = (bound or {}).get(lst.name, [])
        for i, addr in enumerate(lst.bind):
            port = addr.port
            if port == 0 and i < len(actual):
                port = int(actual[i].rsplit(":", 1)[1])
            found.append((lst.protocol, lst.tls, port))
    return MailSetup(config.hostname, config.domains, doors(found))


class AutoconfigSession(HttpSession):
    """One HTTP connection to the autoconfig site."""

    log = log

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot, setup: SetupSource) -> None:
        super().__init__(services, listener, tls_context, slot)
        self.setup = setup

    async def respond(self, request: Request) -> Answer:
        return answer(request.method, request.target, request.body, self.setup(),
                      acme_http01_response)


refusal_line = http.refusal_line


def session_factory(services: Services, listener: ListenerConfig, context: ssl.SSLContext,
                    setup: SetupSource) -> Callable[[Slot], asyncio.Protocol]:
    """One StreamReaderProtocol per accepted connection (server/listener.py)."""
    return http.stream_factory(
        lambda slot: AutoconfigSession(services, listener, context, slot, setup))
