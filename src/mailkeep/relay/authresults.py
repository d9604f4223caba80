"""Inbound message authentication: SPF, DKIM, DMARC and ARC, reported in one
Authentication-Results field (RFC 8601) that names us (authserv-id = our host name).

The MX listener, after DATA:

    message = strip_forged(message, {hostname})                 # RFC 8601 §5
    verdict = await authenticate_async(message, Peer(ip, helo, mail_from), hostname)
    refusal = dmarc_refusal(verdict, reject_dmarc_failures=cfg.reject_dmarc_failures)
    if refusal: reply refusal (550 5.7.1)
    else: spool verdict.header_field() + message

Who does what: pyspf evaluates SPF (RFC 7208) for the connecting IP against the HELO name and
the MAIL FROM domain; dkimpy verifies each DKIM-Signature (RFC 6376) and the ARC chain
(RFC 8617); relay/dmarc.py applies DMARC (RFC 7489) to those results with authheaders' Public
Suffix List; authres renders each result. All DNS goes through one resolver (relay/authdns.py)
so a test -- or an operator -- can name the server.

The work is blocking (DNS, RSA) and runs in a worker thread. It is bounded twice: every DNS
query by `DNS_QUERY_TIMEOUT` (and SPF as a whole by `SPF_LOOKUP_TIME`), and the whole
verification by `VERIFY_TIMEOUT`, after which whatever is not finished reads `temperror`: a
slow DNS never holds delivery. Nothing here rejects mail; `dmarc_refusal` is the one policy
decision, and it is off unless the operator turns it on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import ipaddress
import logging
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass

import dkim
import dkim.util
import dns.resolver
import spf
from authres import DKIMAuthenticationResult, SPFAuthenticationResult
from authres.arc import ARCAuthenticationResult
from authres.dmarc import DMARCAuthenticationResult

from mailkeep.proto.message import CRLF, split_message
from mailkeep.relay.authdns import (
    DNS_QUERY_TIMEOUT,
    DkimKeyFetcher,
    DnsTempError,
    spf_resolver,
    system_resolver,
    txt_records,
)
from mailkeep.relay.dmarc import (
    Authenticated,
    DmarcOutcome,
    DmarcPolicy,
    ascii_domain,
    evaluate,
)

log = logging.getLogger(__name__)


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """dkimpy logs every key it cannot use at ERROR; a stranger's broken signature is no
    error of ours, and its verdict is in the field we write. Those lines go to DEBUG."""

    def error(self, msg: object, *args: object, **kwargs: object) -> None:
        self.debug(msg, *args, **kwargs)  # type: ignore[arg-type]


_dkimpy_log = _QuietLogger(logging.getLogger(f"{__name__}.dkimpy"), {})

FIELD_NAME = "Authentication-Results"
# RFC 7208 §4.6.4: SPF evaluation may be given at least 20 seconds in all.
SPF_LOOKUP_TIME = 20.0
# The whole verification: SPF's 20 s plus a few DKIM key and DMARC queries. The SMTP client
# waits up to 10 minutes for the reply to the end of DATA (RFC 5321 §4.5.3.2.6).
VERIFY_TIMEOUT = 30.0
# RFC 6376 §6.1 lets verifiers limit how many signatures they try to verify; a
# message with hundreds of signatures would otherwise cost hundreds of DNS queries.
MAX_DKIM_SIGNATURES = 5
# Messages checked at once. The work is mostly waiting on DNS; past this, checks queue (and
# the queueing counts against VERIFY_TIMEOUT).
AUTH_WORKERS = 8
# RFC 8301 §3.2: verifiers MUST NOT consider signatures with RSA keys under 1024 bits valid.
MIN_RSA_KEY_BITS = 1024

_DKIM_RESULTS = ("pass", "fail", "neutral", "policy", "temperror", "permerror")


@dataclass(frozen=True, slots=True)
class Peer:
    """What the SMTP session knows: client IP, its HELO/EHLO name, MAIL FROM ("" for <>)."""

    ip: str
    helo: str
    mail_from: str


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """RFC 7208 §2.6 result for one identity ("mailfrom" or "helo") and its domain."""

    result: str
    identity: str
    subject: str          # the MAIL FROM address, or the HELO name
    domain: str
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """RFC 8601 §2.7.1 result for one DKIM-Signature field."""

    result: str
    domain: str | None = None       # d=
    selector: str | None = None     # s=
    identity: str | None = None     # i=
    algorithm: str | None = None    # a=
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    authserv_id: str
    spf_mailfrom: SpfOutcome | None
    spf_helo: SpfOutcome | None
    dkim: tuple[DkimOutcome, ...]
    dmarc: DmarcOutcome
    arc: str | None                 # "none" / "pass" / "fail", None when not checked
    timed_out: bool = False

    @property
    def header_value(self) -> str:
        return _render(self)

    def header_field(self) -> bytes:
        """`Authentication-Results: ...` with its CRLF, to put on top of the message."""
        return f"{FIELD_NAME}: {self.header_value}\r\n".encode("ascii")

    @property
    def dmarc_policy(self) -> DmarcPolicy | None:
        return self.dmarc.policy


def add_results(message: bytes, verdict: AuthVerdict) -> bytes:
    """The message with our Authentication-Results field on top (RFC 8601 §5)."""
    return verdict.header_field() + message


def dmarc_refusal(verdict: AuthVerdict, *, reject_dmarc_failures: bool) -> str | None:
    """The 550 reply when policy says to refuse this message, else None.

    Only with the switch on, only for a DMARC `fail` (never temperror or permerror), and only
    when the domain's applicable policy is p=reject (RFC 7489 §6.7: honouring it is the
    receiver's choice). DEVIATION (RFC 7489 §6.6.4): a pct= below 100 asks receivers to reject a
    sample; we reject none of them, so a domain trying DMARC out loses no mail here."""
    d = verdict.dmarc
    if not reject_dmarc_failures or d.result != "fail" or d.policy is not DmarcPolicy.REJECT \
            or d.pct < 100:
        return None
    return (f"550 5.7.1 Message rejected: {d.from_domain} publishes DMARC policy reject and "
            "this message failed DMARC authentication")


# -- running the checks ---------------------------------------------------------------------------

class _Progress:
    """What the worker thread has finished, readable if the caller stops waiting."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spf_mailfrom: SpfOutcome | None = None
        self.spf_helo: SpfOutcome | None = None
        self.dkim: tuple[DkimOutcome, ...] | None = None
        self.arc: str | None = None
        self.dmarc: DmarcOutcome | None = None

    def set(self, **values: object) -> None:
        with self.lock:
            for name, value in values.items():
                setattr(self, name, value)


def authenticate(message: bytes, peer: Peer, authserv_id: str,
                 resolver: dns.resolver.Resolver | None = None, *, arc: bool = True,
                 _progress: _Progress | None = None) -> AuthVerdict:
    """Verify SPF, DKIM, ARC and DMARC for one message. Blocking: run it off the loop."""
    authserv_id = _check_authserv_id(authserv_id)
    resolver = resolver or system_resolver()
    progress = _progress or _Progress()

    spf_helo = _check_spf_helo(peer, resolver)
    progress.set(spf_helo=spf_helo)
    spf_mailfrom = _check_spf_mailfrom(peer, resolver)
    progress.set(spf_mailfrom=spf_mailfrom)
    dkim_outcomes = _check_dkim(message, resolver)
    progress.set(dkim=dkim_outcomes)
    arc_result = _check_arc(message, resolver) if arc else None
    progress.set(arc=arc_result)

    # RFC 7489 §4.1: SPF for DMARC is the MAIL FROM identity, or HELO when MAIL FROM is null.
    spf_for_dmarc = spf_mailfrom if spf_mailfrom is not None else spf_helo
    spf_pass = Authenticated(spf_for_dmarc.domain) \
        if spf_for_dmarc is not None and spf_for_dmarc.result == "pass" else None
    dkim_pass = [Authenticated(o.domain) for o in dkim_outcomes
                 if o.result == "pass" and o.domain]
    dmarc_outcome = evaluate(message, spf_pass, dkim_pass,
                             lambda name: txt_records(resolver, name))
    progress.set(dmarc=dmarc_outcome)
    return AuthVerdict(authserv_id, spf_mailfrom, spf_helo, dkim_outcomes, dmarc_outcome,
                       arc_result)


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _auth_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor  # noqa: PLW0603 -- one pool per process, made on first use
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=AUTH_WORKERS, thread_name_prefix="mailkeep-auth")
        return _executor


async def authenticate_async(message: bytes, peer: Peer, authserv_id: str,
                             resolver: dns.resolver.Resolver | None = None, *,
                             arc: bool = True, timeout: float = VERIFY_TIMEOUT,
                             executor: concurrent.futures.Executor | None = None,
                             ) -> AuthVerdict:
    """`authenticate` in a worker thread, for at most `timeout` seconds.

    The threads are a pool of their own (`AUTH_WORKERS`), not the event loop's default
    executor: checks that wait on a slow DNS must not hold up the Maildir writes that use
    asyncio.to_thread. Time spent queueing for a worker counts against `timeout`, and a check
    that never started is dropped.

    Never raises for the message's sake: past the time limit the checks not yet finished
    read `temperror`; an unexpected error in a library is logged and reads `temperror` too."""
    authserv_id = _check_authserv_id(authserv_id)
    progress = _Progress()
    loop = asyncio.get_running_loop()
    # Like asyncio.to_thread: the worker runs in a copy of our context (spf_resolver sets a
    # context variable there, and only there).
    call = functools.partial(contextvars.copy_context().run, authenticate, message, peer,
                             authserv_id, resolver, arc=arc, _progress=progress)
    try:
        return await asyncio.wait_for(
            loop.run_in_executor(executor or _auth_executor(), call), timeout)
    except TimeoutError:
        log.warning("authentication checks for a message from %s took over %g s; "
                    "unfinished results are temperror", peer.ip, timeout)
    except Exception:
        log.exception("authentication checks failed for a message from %s", peer.ip)
    return _unfinished(progress, authserv_id, peer)


def _unfinished(progress: _Progress, authserv_id: str, peer: Peer) -> AuthVerdict:
    with progress.lock:
        spf_helo, spf_mailfrom = progress.spf_helo, progress.spf_mailfrom
        dkim_outcomes, arc_result, dmarc_outcome = progress.dkim, progress.arc, progress.dmarc
    comment = "verification did not finish"
    helo_domain = _helo_domain(peer.helo)
    if spf_helo is None and helo_domain is not None:
        spf_helo = SpfOutcome("temperror", "helo", helo_domain, helo_domain, comment)
    sender_domain = _mail_from_domain(peer.mail_from)
    if spf_mailfrom is None and sender_domain is not None:
        spf_mailfrom = SpfOutcome("temperror", "mailfrom", peer.mail_from, sender_domain,
                                  comment)
    if dkim_outcomes is None:
        dkim_outcomes = (DkimOutcome("temperror", comment=comment),)
    # An ARC chain not yet verified is left out: RFC 8617 results are none, pass and fail, and
    # none of them would be true.
    if dmarc_outcome is None:
        dmarc_outcome = DmarcOutcome("temperror", comment=comment)
    return AuthVerdict(authserv_id, spf_mailfrom, spf_helo, dkim_outcomes, dmarc_outcome,
                       arc_result, timed_out=True)


# -- SPF (RFC 7208) -------------------------------------------------------------------------------

def _client_ip(ip: str) -> str:
    address = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # the IPv4 client behind a dual-stack socket
    return str(address)


def _helo_domain(helo: str) -> str | None:
    """The HELO name if it is a domain (RFC 7208 §2.3 checks only those), else None."""
    name = helo.strip().rstrip(".")
    if not name or name.startswith("[") or "." not in name:
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return ascii_domain(name)


def _mail_from_domain(mail_from: str) -> str | None:
    address = mail_from.strip().strip("<>")
    if "@" not in address:
        return None
    return ascii_domain(address.rpartition("@")[2])


def _spf(ip: str, sender: str, helo: str, resolver: dns.resolver.Resolver) -> str:
    """The RFC 7208 §2.6 result. pyspf's explanation is not kept: an exp= modifier lets the
    checked domain write it, and it would land in our header field."""
    with spf_resolver(resolver):
        try:
            query = spf.query(i=_client_ip(ip), s=sender, h=helo, timeout=DNS_QUERY_TIMEOUT,
                              querytime=SPF_LOOKUP_TIME)
            result, _code, _explanation = query.check()
        except spf.TempError as e:
            log.debug("SPF temperror for %s: %s", sender or helo, e)
            return "temperror"
        except (spf.PermError, ValueError) as e:  # ValueError: an address pyspf cannot parse
            log.debug("SPF permerror for %s: %s", sender or helo, e)
            return "permerror"
    return str(result)


def _check_spf_helo(peer: Peer, resolver: dns.resolver.Resolver) -> SpfOutcome | None:
    domain = _helo_domain(peer.helo)
    if domain is None:
        return None
    # pyspf checks the HELO identity when the sender is empty: postmaster@HELO (§2.3, §2.4).
    return SpfOutcome(_spf(peer.ip, "", domain, resolver), "helo", domain, domain)


def _check_spf_mailfrom(peer: Peer, resolver: dns.resolver.Resolver) -> SpfOutcome | None:
    sender = peer.mail_from.strip().strip("<>")
    domain = _mail_from_domain(sender)
    if domain is None:
        return None  # the null sender: its identity is the HELO name, checked above
    result = _spf(peer.ip, f"{sender.rpartition('@')[0]}@{domain}", peer.helo, resolver)
    return SpfOutcome(result, "mailfrom", sender, domain)


# -- DKIM (RFC 6376) and ARC (RFC 8617) -----------------------------------------------------------

def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        tags = dkim.util.parse_tag_value(value)
    except Exception:  # dkimpy raises its own InvalidTagValueList, and worse on garbage
        return {}
    return tags if isinstance(tags, dict) else {}


def _text(tags: dict[bytes, bytes], key: bytes) -> str | None:
    value = tags.get(key)
    return value.decode("ascii", "replace") if value else None


def _check_dkim(message: bytes, resolver: dns.resolver.Resolver) -> tuple[DkimOutcome, ...]:
    checker = dkim.DKIM(message, logger=_dkimpy_log, minkey=MIN_RSA_KEY_BITS,
                        timeout=DNS_QUERY_TIMEOUT)
    signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
    if not signatures:
        return ()  # rendered as dkim=none
    outcomes: list[DkimOutcome] = []
    for idx, raw in enumerate(signatures[:MAX_DKIM_SIGNATURES]):
        tags = _signature_tags(raw)
        about = {"domain": _text(tags, b"d"), "selector": _text(tags, b"s"),
                 "identity": _text(tags, b"i"), "algorithm": _text(tags, b"a")}
        fetch = DkimKeyFetcher(resolver)
        try:
            ok = checker.verify(idx=idx, dnsfunc=fetch)
        except DnsTempError:
            outcomes.append(DkimOutcome("temperror", comment="key lookup failed", **about))
            continue
        except dkim.ValidationError as e:
            # A body hash mismatch, an expired signature: the signature does not hold.
            why = "body hash mismatch" if "body hash" in str(e) else "invalid signature"
            outcomes.append(DkimOutcome("fail", comment=why, **about))
            continue
        except dkim.DKIMException as e:
            log.debug("DKIM signature %d: %s", idx, e)
            outcomes.append(DkimOutcome("permerror", comment="malformed signature or key",
                                        **about))
            continue
        except Exception as e:  # dkimpy on malformed input it did not expect
            log.debug("dkimpy raised on signature %d: %r", idx, e)
            outcomes.append(DkimOutcome("permerror", comment="malformed signature", **about))
            continue
        if ok:
            outcomes.append(DkimOutcome("pass", **about))
        elif fetch.missing:
            # RFC 6376 §6.1.2: no key record is a permanent failure of this signature.
            outcomes.append(DkimOutcome("permerror", comment="no key", **about))
        else:
            outcomes.append(DkimOutcome("fail", comment="signature did not verify", **about))
    return tuple(outcomes)


def _check_arc(message: bytes, resolver: dns.resolver.Resolver) -> str:
    try:
        cv, _results, _comment = dkim.ARC(message, logger=_dkimpy_log,
                                          minkey=MIN_RSA_KEY_BITS,
                                          timeout=DNS_QUERY_TIMEOUT).verify(
            dnsfunc=DkimKeyFetcher(resolver))
    except DnsTempError:
        return "fail"  # RFC 8617 §4.4 results are none, pass and fail
    except Exception as e:  # malformed ARC sets raise from deep inside dkimpy
        log.debug("dkimpy ARC verification raised: %r", e)
        return "fail"
    if cv == dkim.CV_Pass:
        return "pass"
    if cv == dkim.CV_None:
        return "none"
    return "fail"  # CV_Fail, or None for a chain that a sealer already marked failed


# -- rendering (RFC 8601 §2.2) --------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-./^_`{|}~]{1,253}")
# A dot-atom address; the local part may be empty, as in DKIM's default i=@domain.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]{0,64}@[A-Za-z0-9\-.]{1,253}")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:=_/@+\-]")


def _check_authserv_id(authserv_id: str) -> str:
    if _TOKEN.fullmatch(authserv_id) is None:
        raise ValueError(f"authserv-id must be a host name: {authserv_id!r}")
    return authserv_id


def _pvalue(value: str | None) -> str | None:
    """A property value that cannot break the field: a token or a plain address, else None."""
    if value is None:
        return None
    if _TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value):
        return value
    return None


def _comment(text: str | None) -> str | None:
    """Comments are our own words; still, nothing in one may end it early or fold the line."""
    if not text:
        return None
    return _COMMENT_UNSAFE.sub("?", text)[:80] or None


def _spf_result(o: SpfOutcome) -> SPFAuthenticationResult:
    if o.identity == "helo":
        return SPFAuthenticationResult(result=o.result, result_comment=_comment(o.comment),
                                       smtp_helo=_pvalue(o.domain))
    # RFC 8601 §2.7.2: smtp.mailfrom names the address (or, failing a plain one, its domain).
    return SPFAuthenticationResult(result=o.result, result_comment=_comment(o.comment),
                                   smtp_mailfrom=_pvalue(o.subject) or _pvalue(o.domain))


def _render(v: AuthVerdict) -> str:
    results: list[object] = []
    for o in (v.spf_mailfrom, v.spf_helo):
        if o is not None:
            results.append(_spf_result(o))
    if not v.dkim:
        results.append(DKIMAuthenticationResult(result="none"))
    for d in v.dkim:
        results.append(DKIMAuthenticationResult(
            result=d.result if d.result in _DKIM_RESULTS else "permerror",
            result_comment=_comment(d.comment), header_d=_pvalue(d.domain),
            header_i=_pvalue(d.identity), header_s=_pvalue(d.selector),
            header_a=_pvalue(d.algorithm)))
    if v.arc is not None:
        results.append(ARCAuthenticationResult(result=v.arc))
    results.append(DMARCAuthenticationResult(
        result=v.dmarc.result, result_comment=_comment(v.dmarc.comment),
        header_from=_pvalue(v.dmarc.from_domain)))
    # One result per line (RFC 8601 §2.2 allows CFWS around ";"), so the field stays readable
    # and far under the 998-octet line limit however many signatures there were.
    return ";\r\n\t".join([_check_authserv_id(v.authserv_id), *(str(r) for r in results)])


# -- forged fields (RFC 8601 §5) ------------------------------------------------------------------

def _strip_comments(text: str) -> str:
    """Drop RFC 5322 comments (nested, with quoted-pairs) from a field value."""
    out: list[str] = []
    depth = 0
    escaped = False
    quoted = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if depth == 0 and ch == '"':
            quoted = not quoted
        if not quoted and ch == "(":
            depth += 1
            continue
        if not quoted and ch == ")" and depth > 0:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value names (lower-cased, unquoted)."""
    text = _strip_comments(" ".join(value.split())).strip()
    if text.startswith('"'):
        end = 1
        chars: list[str] = []
        while end < len(text) and text[end] != '"':
            if text[end] == "\\" and end + 1 < len(text):
                end += 1
            chars.append(text[end])
            end += 1
        ident = "".join(chars)
    else:
        ident = re.split(r"[\s;]", text, maxsplit=1)[0]
    return ident.strip().rstrip(".").lower()


def strip_forged(message: bytes, authserv_ids: Collection[str]) -> bytes:
    """Remove incoming Authentication-Results fields that claim to be ours (RFC 8601 §5).

    A sender could otherwise write `Authentication-Results: our.host; dkim=pass` into its
    message and have a mail reader trust it. Matching ignores case, comments, quoting and a
    trailing dot; every other byte of the message is kept as it came."""
    ours = {i.strip().rstrip(".").lower() for i in authserv_ids}
    header, rest = split_message(message)
    ends_with_crlf = header.endswith(CRLF)
    lines = header.split(CRLF)
    if ends_with_crlf:
        lines.pop()
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # RFC 5322 §2.2.3: a folded continuation
        else:
            fields.append([line])
    kept = [f for f in fields if not _claims(f, ours)]
    if len(kept) == len(fields):
        return message
    out = CRLF.join(line for f in kept for line in f)
    if ends_with_crlf and kept:
        out += CRLF
    return out + rest


_FIELD_KEY = FIELD_NAME.lower().encode("ascii")


def _claims(field_lines: list[bytes], ours: set[str]) -> bool:
    name, colon, first = field_lines[0].partition(b":")
    if not colon or name.rstrip(b" \t").lower() != _FIELD_KEY:
        return False
    value = b" ".join([first, *field_lines[1:]]).decode("utf-8", "surrogateescape")
    return authserv_id_of(value) in ours
