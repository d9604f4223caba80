"""What Thunderbird itself makes of our autoconfig documents.

Real Thunderbird (Debian's package), headless, driven over Marionette: its own account-setup
modules (FetchConfig.fromISP, readFromXML, fetchConfigFromExchange) fetch from the running
daemon and parse, exactly as the account hub does when someone types an address. See
docs/clients.md. Skipped where Thunderbird is not installed (scripts/check.sh installs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from tests.support.autoconfig import start_autoconfig_daemon
from tests.support.daemon import HOSTNAME, RunningDaemon
from tests.support.thunderbird import Thunderbird, thunderbird_binary

pytestmark = pytest.mark.skipif(thunderbird_binary() is None,
                                reason="thunderbird is not installed")

SCRIPT = """
const [domain, address] = arguments;
const modules = "resource:///modules/accountcreation/";
const { FetchConfig } = ChromeUtils.importESModule(modules + "FetchConfig.sys.mjs");
const { AccountConfig } = ChromeUtils.importESModule(modules + "AccountConfig.sys.mjs");
const { fetchHTTP } = ChromeUtils.importESModule(modules + "FetchHTTP.sys.mjs");
const { readFromXML } = ChromeUtils.importESModule(modules + "readFromXML.sys.mjs");
const { fetchConfigFromExchange } = ChromeUtils.importESModule(
  modules + "ExchangeAutoDiscover.sys.mjs");
const server = s => ({type: s.type, hostname: s.hostname, port: s.port,
                      socketType: s.socketType, auth: s.auth, username: s.username});
const summary = c => ({subSource: c.subSource, id: c.id, displayName: c.displayName,
                       domains: c.domains, complete: c.isComplete(),
                       incoming: [c.incoming, ...c.incomingAlternatives].map(server),
                       outgoing: [c.outgoing, ...c.outgoingAlternatives].map(server)});
(async () => {
  const out = {constants: {SSL: Ci.nsMsgSocketType.SSL,
                           STARTTLS: Ci.nsMsgSocketType.alwaysSTARTTLS,
                           cleartext: Ci.nsMsgAuthMethod.passwordCleartext}};
  const isp = await FetchConfig.fromISP(domain, address, new AbortController().signal);
  out.isp = summary(isp);
  AccountConfig.replaceVariables(isp, "Alice", address, "not-sent");
  out.filled = summary(isp);
  out.paths = {};
  for (const url of [`http://autoconfig.${domain}/mail/config-v1.1.xml`,
                     `http://${domain}/.well-known/autoconfig/mail/config-v1.1.xml`]) {
    out.paths[url] = summary(readFromXML(await fetchHTTP(url, {}), "test"));
  }
  const exchange = await fetchConfigFromExchange(
    domain, address, new AbortController().signal, null, "not-sent",
    () => Promise.reject(new Error("no redirects expected")));
  out.exchange = summary(exchange);
  return out;
})().then(resolve, e => resolve({error: String(e) + "\\n" + (e && e.stack)}));
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory,
          ca: trustme.CA) -> Iterator[tuple[RunningDaemon, dict[str, Any]]]:
    """One Thunderbird run (it takes seconds to start) whose findings both tests read."""
    tmp_path = tmp_path_factory.mktemp("thunderbird")
    daemon = start_autoconfig_daemon(tmp_path / "site", ca)
    thunderbird: Thunderbird | None = None
    try:
        thunderbird = Thunderbird(tmp_path / "profile", daemon.ports["autoconfig"])
        result = thunderbird.marionette.run_async(SCRIPT, "example.test",
                                                  "alice@example.test")
        yield daemon, result
    finally:
        if thunderbird is not None:
            thunderbird.stop()
        daemon.stop()


def _server(kind: str, port: int, socket_type: int, username: str,
            auth: int) -> dict[str, Any]:
    return {"type": kind, "hostname": HOSTNAME, "port": port, "socketType": socket_type,
            "auth": auth, "username": username}


def test_thunderbird_reads_our_config(setup: tuple[RunningDaemon, dict[str, Any]]) -> None:
    daemon, result = setup
    assert "error" not in result, result.get("error")
    ssl, starttls = result["constants"]["SSL"], result["constants"]["STARTTLS"]
    auth = result["constants"]["cleartext"]
    ports = daemon.ports
    expected_incoming = [
        _server("imap", ports["imaps"], ssl, "%EMAILADDRESS%", auth),
        _server("imap", ports["imap"], starttls, "%EMAILADDRESS%", auth),
        _server("pop3", ports["pop3s"], ssl, "%EMAILADDRESS%", auth),
        _server("pop3", ports["pop3"], starttls, "%EMAILADDRESS%", auth),
    ]
    expected_outgoing = [
        _server("smtp", ports["submissions"], ssl, "%EMAILADDRESS%", auth),
        _server("smtp", ports["submission"], starttls, "%EMAILADDRESS%", auth),
    ]
    isp = result["isp"]
    # Found over plain HTTP at autoconfig.DOMAIN (https was refused: no proxy tunnel).
    assert isp["subSource"] == "xml-from-isp-http"
    assert isp["complete"] is True
    assert isp["id"] == "example.test"
    assert isp["domains"] == ["example.test"]
    assert isp["incoming"] == expected_incoming
    assert isp["outgoing"] == expected_outgoing
    # %EMAILADDRESS% becomes the address typed in: the login mailkeep accepts.
    filled = result["filled"]
    assert filled["incoming"][0]["username"] == "alice@example.test"
    assert filled["outgoing"][0]["username"] == "alice@example.test"
    # Both of Thunderbird's locations parse to the same configuration.
    for url, parsed in result["paths"].items():
        assert parsed["incoming"] == expected_incoming, url
        assert parsed["outgoing"] == expected_outgoing, url


def test_thunderbird_reads_our_autodiscover(
        setup: tuple[RunningDaemon, dict[str, Any]]) -> None:
    """Thunderbird's Exchange AutoDiscover path POSTs to autodiscover.DOMAIN and reads the
    POX response: the preferred IMAP and SMTP doors, the address as the login."""
    daemon, result = setup
    assert "error" not in result, result.get("error")
    exchange = result["exchange"]
    ssl, auth = result["constants"]["SSL"], result["constants"]["cleartext"]
    assert exchange["subSource"].startswith("exchange-from-url3")  # the http URL
    assert exchange["incoming"][0] == _server("imap", daemon.ports["imaps"], ssl,
                                              "alice@example.test", auth)
    assert exchange["outgoing"][0] == _server("smtp", daemon.ports["submissions"], ssl,
                                              "alice@example.test", auth)
