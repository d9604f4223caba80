"""DKIM signing of outbound mail (RFC 6376), with dkimpy doing the cryptography.

One key per local domain, named by a selector: `DkimKey.load(path, domain, selector)` at
start-up (it checks the key, so a bad file is a configuration error, not a failed delivery),
then `await sign_async(message, key)` per message -- RSA signing is CPU work and runs off the
event loop. `sign()` is the same, blocking, and returns the message with its DKIM-Signature
field prepended.

For `mailkeep dkim keygen DOMAIN [--selector S]`: `keygen()` makes a key pair, `write_key()`
stores the private key with mode 0600, and `txt_record()` prints the DNS record to publish.

RSA 2048 by default (RFC 8301 §3.2: signers MUST use at least 1024 bits and SHOULD use 2048);
Ed25519 (RFC 8463) when asked -- receivers that do not know it ignore that signature, so
publish it beside an RSA one. Key files are PEM (PKCS#8) for both kinds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailkeep.proto.message import parse_header_fields, split_message

RSA_KEY_BITS = 2048  # RFC 8301 §3.2
# The selector `mailkeep dkim keygen` uses unless told (rotate with a new one: the old key
# must stay published while mail signed with it is in flight).
DEFAULT_SELECTOR = "mailkeep"
RSA_PUBLIC_EXPONENT = 65537
# RFC 1035 §3.3.14: a TXT record is a list of character-strings of at most 255 octets each.
TXT_STRING_MAX = 255
# RFC 6376 §3.4: relaxed header and body canonicalisation survive the re-folding and
# white-space changes that relays make; simple breaks on them.
CANONICALIZATION = (b"relaxed", b"relaxed")

# RFC 6376 §5.4.1: the header fields a signer SHOULD sign, plus the MIME fields that decide
# how the body reads (RFC 2045). Each is signed as many times as it appears.
SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-message-id",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive",
)
# RFC 6376 §5.4.2 and §8.15: signing a field once more than it occurs stops anyone adding
# another instance (a second From that a reader shows instead of the signed one). These are
# the fields RFC 5322 §3.6 and RFC 2045 allow only once; From is always present.
OVERSIGNED: frozenset[str] = frozenset({
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding",
})

# RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); RFC 5321 §4.1.2 sub-domain.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class KeyType(Enum):
    RSA = "rsa"
    ED25519 = "ed25519"


class DkimError(Exception):
    """A key or message that cannot be signed: configuration, or a message without From."""


def ascii_domain(domain: str) -> str:
    """The domain as DNS and the d= tag carry it: lower-case A-labels, no final dot."""
    domain = domain.strip().rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise DkimError(f"not a domain name: {domain!r}") from None
    if _DOMAIN.fullmatch(ascii_domain) is None or len(ascii_domain) > 253:
        raise DkimError(f"not a domain name: {domain!r}")
    return ascii_domain.lower()


def check_selector(selector: str) -> str:
    """The selector, if RFC 6376 §3.1 allows it (DkimError otherwise)."""
    if _DOMAIN.fullmatch(selector) is None or len(selector) > 63:
        raise DkimError(f"not a DKIM selector (RFC 6376 §3.1): {selector!r}")
    return selector


def _load_private(pem: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise DkimError(f"not an unencrypted PEM private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            # RFC 8301 §3.2: verifiers MUST NOT consider signatures with smaller keys valid.
            raise DkimError(f"RSA key of {key.key_size} bits: DKIM needs at least 1024")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DkimError("DKIM keys are RSA or Ed25519 (RFC 6376 §3.3, RFC 8463)")


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A checked signing key for one domain and selector. The key never shows in a repr."""

    domain: str
    selector: str
    key_type: KeyType
    private_pem: bytes = field(repr=False)

    @classmethod
    def from_pem(cls, domain: str, selector: str, private_pem: bytes) -> DkimKey:
        key = _load_private(private_pem)
        key_type = KeyType.RSA if isinstance(key, rsa.RSAPrivateKey) else KeyType.ED25519
        return cls(ascii_domain(domain), check_selector(selector), key_type, private_pem)

    @classmethod
    def load(cls, path: Path, domain: str, selector: str) -> DkimKey:
        """Read and check a key file (blocking: call at start-up or off the loop)."""
        return cls.from_pem(domain, selector, Path(path).read_bytes())

    @property
    def record_name(self) -> str:
        return record_name(self.domain, self.selector)

    def txt_value(self) -> str:
        return txt_value(self.private_pem)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature field prepended (blocking CPU work)."""
        return sign(message, self.domain, self.selector, self.private_pem)


def signed_header_list(message: bytes) -> list[bytes]:
    """The h= list for this message: RFC 6376 §5.4.1's fields as present, oversigned."""
    header, _ = split_message(message)
    present: dict[str, int] = {}
    for f in parse_header_fields(header):
        present[f.key] = present.get(f.key, 0) + 1
    if not present.get("from"):
        # RFC 6376 §5.4: "The From header field MUST be signed"; RFC 5322 §3.6: it exists.
        raise DkimError("the message has no From header field")
    names: list[bytes] = []
    for name in SIGNED_HEADERS:
        count = present.get(name, 0) + (1 if name in OVERSIGNED else 0)
        names.extend([name.encode("ascii")] * count)
    return names


def sign(message: bytes, domain: str, selector: str, key_pem: bytes) -> bytes:
    """Sign `message` for `domain` with the key published at `selector` (blocking)."""
    key = _load_private(key_pem)
    d = ascii_domain(domain).encode("ascii")
    s = check_selector(selector).encode("ascii")
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm, private = b"rsa-sha256", key_pem
    else:
        # dkimpy takes an Ed25519 key as its 32-byte seed, base64-encoded (RFC 8463 §3).
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        algorithm, private = b"ed25519-sha256", base64.b64encode(seed)
    try:
        signature: bytes = dkim.DKIM(message).sign(
            s, d, private, signature_algorithm=algorithm, canonicalize=CANONICALIZATION,
            include_headers=signed_header_list(message))
    except dkim.DKIMException as e:
        raise DkimError(f"DKIM signing failed: {e}") from None
    if not signature.endswith(b"\r\n"):
        signature += b"\r\n"
    return signature + message


async def sign_async(message: bytes, key: DkimKey) -> bytes:
    """`key.sign(message)` in a worker thread, so the event loop keeps serving."""
    return await asyncio.to_thread(key.sign, message)


# -- keys and DNS records -----------------------------------------------------------------------

def keygen(domain: str, selector: str = DEFAULT_SELECTOR,
           key_type: KeyType = KeyType.RSA) -> tuple[bytes, str]:
    """A new key pair: (private key PEM, the DNS TXT record to publish as a zone-file line)."""
    ascii_domain(domain)
    check_selector(selector)
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if key_type is KeyType.RSA:
        private = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT,
                                           key_size=RSA_KEY_BITS)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, txt_record(domain, selector, pem)


def txt_value(private_pem: bytes) -> str:
    """The key record's text (RFC 6376 §3.6.1): `v=DKIM1; k=rsa; p=...`."""
    key = _load_private(private_pem)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    # RFC 8463 §4: p= is the bare 32-byte public key, base64-encoded.
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def record_name(domain: str, selector: str) -> str:
    """RFC 6376 §3.6.2.1: the key lives at SELECTOR._domainkey.DOMAIN."""
    return f"{check_selector(selector)}._domainkey.{ascii_domain(domain)}"


def txt_strings(value: str) -> list[str]:
    """The record text cut into TXT character-strings of at most 255 octets."""
    return [value[i:i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)] or [""]


def txt_record(domain: str, selector: str, private_pem: bytes) -> str:
    """A zone-file line to publish: `sel._domainkey.example.com. IN TXT "v=DKIM1; ..." "..."`."""
    strings = " ".join(f'"{s}"' for s in txt_strings(txt_value(private_pem)))
    return f"{record_name(domain, selector)}. IN TXT {strings}"


def write_key(path: Path, private_pem: bytes, *, overwrite: bool = False) -> None:
    """Store a private key readable by its owner only (mode 0600), atomically.

    Refuses to replace an existing key unless `overwrite`: the old one may be published in
    DNS and signing mail in flight. The file is complete on disk before its name appears."""
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask said
            os.write(fd, private_pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if the name exists
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def key_file_problem(path: Path) -> str | None:
    """A sentence for check-config when a key file is readable by others, else None."""
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        return f"{path}: DKIM private key is readable by others (mode {mode:04o}); chmod 600"
    return None
