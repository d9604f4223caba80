"""The workers' shared counters (coordinator and its wire format), spool claims, and the
`workers` key."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from mailkeep.config import ConfigError, load_config
from mailkeep.config.model import MAX_WORKERS, Config, ImapConfig, SecurityConfig, default_workers
from mailkeep.relay import claims
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolRecipient, new_id
from mailkeep.security.rate import RateLimiter
from mailkeep.workers.coordinator import Coordinator
from mailkeep.workers.protocol import MAX_ARG, BadRequest, decode_request, encode
from tests.unit.test_config import MINIMAL


def coordinator(**security: int) -> Coordinator:
    config = Config(path=Path("x.toml"), hostname="h", domains=("d",), data_dir=Path("d"),
                    tls=None, directory=None, listeners=(),  # type: ignore[arg-type]
                    security=SecurityConfig(**security),
                    imap=ImapConfig(max_connections_per_user=3,
                                    max_connections_per_user_ip=2))
    return Coordinator(config)


def ask(c: Coordinator, worker: int, *request: object) -> object:
    op, args = decode_request(encode(list(request)))
    return c.handle(worker, op, args)


# -- the wire format ------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"", b"not json", b"{}", b"[]", b"[1]", b'["budget.acquire"]',
    b'["budget.acquire", 1]', b'["budget.acquire", "a", "b"]', b'["os.system", "rm"]',
    b'["throttle.end", "1.2.3.4", "yes"]', b'["ready", []]',
    json.dumps(["budget.acquire", "x" * (MAX_ARG + 1)]).encode(),
    b"[" * 5000,
    pickle.dumps(("budget.acquire", "1.2.3.4")),
])
def test_anything_but_a_listed_request_is_refused(data: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_request(data)


def test_requests_are_json_arrays() -> None:
    assert decode_request(b'["sessions.acquire","bob","10.0.0.1"]') == \
        ("sessions.acquire", ["bob", "10.0.0.1"])


# -- the coordinator ------------------------------------------------------------------------

def test_connections_per_address_count_across_workers_and_die_with_their_worker() -> None:
    c = coordinator(max_connections_per_ip=3)
    assert ask(c, 1, "budget.acquire", "10.0.0.1") is None
    assert ask(c, 1, "budget.acquire", "10.0.0.1") is None
    assert ask(c, 2, "budget.acquire", "10.0.0.1") is None
    assert ask(c, 2, "budget.acquire", "10.0.0.1") == "too many connections from your address"
    # A worker cannot give back what another holds.
    ask(c, 2, "budget.release", "10.0.0.1")
    ask(c, 2, "budget.release", "10.0.0.1")
    assert ask(c, 2, "budget.count", "10.0.0.1") == 2
    c.forget(1)  # worker 1 died
    assert ask(c, 2, "budget.count", "10.0.0.1") == 0
    assert c.budget.total == 0


def test_sessions_count_across_workers_and_die_with_their_worker() -> None:
    c = coordinator()
    assert ask(c, 1, "sessions.acquire", "bob", "10.0.0.1") is None
    assert ask(c, 2, "sessions.acquire", "bob", "10.0.0.1") is None
    refusal = ask(c, 3, "sessions.acquire", "bob", "10.0.0.1")
    assert isinstance(refusal, str) and "at most 2" in refusal
    c.forget(2)
    assert ask(c, 3, "sessions.acquire", "bob", "10.0.0.1") is None
    assert ask(c, 3, "sessions.count", "bob", "") == 2


def test_login_failures_from_every_worker_block_the_address() -> None:
    c = coordinator(auth_failures_before_block=4, auth_failures_before_delay=100)
    for worker in (1, 2, 1, 2):
        assert ask(c, worker, "throttle.begin", "10.0.0.9") == ["allow", 0.0]
        ask(c, worker, "throttle.end", "10.0.0.9", False)
    verdict = ask(c, 3, "throttle.check", "10.0.0.9")
    assert isinstance(verdict, list) and verdict[0] == "blocked"


def test_attempts_in_flight_of_a_dead_worker_are_ended_not_counted() -> None:
    c = coordinator(auth_failures_before_block=2, auth_failures_before_delay=100)
    assert ask(c, 1, "throttle.begin", "10.0.0.9") == ["allow", 0.0]
    assert ask(c, 1, "throttle.begin", "10.0.0.9") == ["allow", 0.0]
    assert ask(c, 2, "throttle.begin", "10.0.0.9") == ["busy", 0.0]
    c.forget(1)
    assert ask(c, 2, "throttle.begin", "10.0.0.9") == ["allow", 0.0]


def test_reconfigure_applies_new_limits() -> None:
    c = coordinator(max_connections_per_ip=1)
    assert ask(c, 1, "budget.acquire", "10.0.0.1") is None
    assert ask(c, 1, "budget.acquire", "10.0.0.1") is not None
    config = Config(path=Path("x.toml"), hostname="h", domains=("d",), data_dir=Path("d"),
                    tls=None, directory=None, listeners=(),  # type: ignore[arg-type]
                    security=SecurityConfig(max_connections_per_ip=2))
    c.reconfigure(config)
    assert ask(c, 1, "budget.acquire", "10.0.0.1") is None


# -- claims on a shared spool -----------------------------------------------------------------

def entry() -> SpoolEntry:
    return SpoolEntry(id=new_id(), mail_from="a@example.test",
                      recipients=[SpoolRecipient("b@partner.test", "remote")],
                      arrival=1.0, size=5)


def test_an_entry_being_attempted_is_not_adopted_until_its_claim_is_let_go(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    e = entry()
    fd = claims.claim_new(spool, e.id)
    spool.accept(e, b"hello")
    assert claims.adopt(spool, set()) == []  # a worker's first attempt
    assert claims.claim(spool, e.id) is None
    claims.release(spool, e.id, fd)
    adopted = claims.adopt(spool, set())
    assert [a.id for a in adopted if isinstance(a, SpoolEntry)] == [e.id]
    assert claims.adopt(spool, {e.id}) == []  # known: left alone


def test_a_finished_entry_leaves_no_claim_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    e = entry()
    fd = claims.claim_new(spool, e.id)
    spool.accept(e, b"hello")
    spool.remove(e.id)
    claims.release(spool, e.id, fd)
    assert list((spool.root / claims.LOCKS).iterdir()) == []
    assert claims.adopt(spool, set()) == []


def test_clean_keeps_young_incoming_files_of_live_workers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    young, old = spool.incoming / "young", spool.incoming / "old"
    young.write_bytes(b"being written")
    old.write_bytes(b"left by a crash")
    os.utime(old, (1.0, 1.0))
    stale = spool.root / claims.LOCKS / "0123456789abcdef"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    os.utime(stale, (1.0, 1.0))
    assert claims.clean(spool) == 1
    assert young.exists() and not old.exists() and not stale.exists()


# -- the `workers` key ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "257", '"many"', "true", "1.5", "-1"])
def test_bad_workers_values_are_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "mailkeep.toml"
    path.write_text(f"workers = {value}\n" + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p for p in info.value.problems if p.startswith("workers: ")], info.value.problems


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("2", 2),
                                                 (str(MAX_WORKERS), MAX_WORKERS)])
def test_workers_values(tmp_path: Path, value: str, expected: int) -> None:
    path = tmp_path / "mailkeep.toml"
    path.write_text(f"workers = {value}\n" + MINIMAL)
    assert load_config(path).workers == expected


def test_workers_default_and_auto_are_one_per_core(tmp_path: Path) -> None:
    path = tmp_path / "mailkeep.toml"
    path.write_text(MINIMAL)
    assert load_config(path).workers == default_workers() >= 1
    path.write_text('workers = "auto"\n' + MINIMAL)
    assert load_config(path).workers == default_workers()


ACME = MINIMAL.replace('cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n',
                       '[tls.acme]\ndirectory = "https://ca.invalid/dir"\n') + \
    '[listeners.subs]\nprotocol = "submission"\ntls = "implicit"\nbind = ["127.0.0.1:465"]\n'


def test_acme_keeps_one_process_unless_told_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "mailkeep.toml"
    path.write_text(ACME)
    assert load_config(path).workers == 1
    path.write_text("workers = 2\n" + ACME)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith("workers: ") and "[tls.acme]" in p for p in info.value.problems)


def test_connector_rates_count_across_workers() -> None:
    c = coordinator()
    c.rates["apps"] = RateLimiter(2, 60.0)
    assert ask(c, 1, "rate.allow", "apps", "10.0.0.5") is True
    assert ask(c, 2, "rate.allow", "apps", "10.0.0.5") is True
    assert ask(c, 1, "rate.allow", "apps", "10.0.0.5") is False
    assert ask(c, 2, "rate.allow", "apps", "10.0.0.6") is True
