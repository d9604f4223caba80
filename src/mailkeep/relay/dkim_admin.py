"""`mailkeep dkim keygen` and `mailkeep dkim show`: signing keys on disk and the DNS records
they need (relay/dkim.py does the cryptography).

Keys live in the config folder's dkim/ directory (mode 0700), one file per domain and
selector, `dkim/DOMAIN.SELECTOR.key` (mode 0600): rotating to a new selector writes a new
file beside the old one, whose record must stay published while mail signed with it may
still be verified.

keygen reads only the config file's `domains` (plain TOML, not the whole validation): the
config may name a key that does not exist yet -- that is the very problem keygen solves.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.config.hints import admin_command
from mailkeep.config.model import Config
from mailkeep.fsmodes import cannot_write, make_private_dirs
from mailkeep.relay.dkim import (
    DEFAULT_SELECTOR,
    DkimError,
    DkimKey,
    KeyType,
    ascii_domain,
    check_selector,
    key_file_problem,
    keygen,
    txt_record,
    write_key,
)

KEY_DIR = "dkim"


class DkimAdminError(Exception):
    """The key cannot be made: a bad name, a domain that is not local, a key in the way."""


@dataclass(frozen=True, slots=True)
class NewKey:
    domain: str
    selector: str
    key_type: KeyType
    path: Path
    record: str                      # the zone-file line to publish
    config_lines: tuple[str, ...]    # what to add to the config
    replaces: str | None = None      # the selector the config signs with now, if another


def key_path(folder: Path, domain: str, selector: str) -> Path:
    return folder / KEY_DIR / f"{domain}.{selector}.key"


def _raw_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DkimAdminError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DkimAdminError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DkimAdminError(f"{path}: not valid TOML: {exc}") from None


def create_key(domain: str, *, selector: str = DEFAULT_SELECTOR,
               key_type: KeyType = KeyType.RSA, config_path: Path | None = None,
               force: bool = False) -> NewKey:
    """Make and store a key for `domain`: under the config's folder (the domain must be one
    of its local domains), or under the current directory without a config."""
    try:
        domain = ascii_domain(domain)
        selector = check_selector(selector)
    except DkimError as exc:
        raise DkimAdminError(str(exc)) from None
    replaces = None
    if config_path is not None:
        config_path = Path(config_path).absolute()
        raw = _raw_config(config_path)
        local = [str(d).lower().rstrip(".") for d in raw.get("domains", [])
                 if isinstance(d, str)]
        if domain not in local:
            raise DkimAdminError(f"{domain} is not one of the local domains in {config_path} "
                                 f"({', '.join(local) or 'none'}); add it to `domains` first")
        dkim_table = raw.get("dkim", {})
        domains_table = dkim_table.get("domains", {}) if isinstance(dkim_table, dict) else {}
        current = domains_table.get(domain) if isinstance(domains_table, dict) else None
        if isinstance(current, dict) and current.get("selector") not in (None, selector):
            replaces = str(current["selector"])
        folder = config_path.parent
    else:
        folder = Path.cwd()
    path = key_path(folder, domain, selector)
    if path.exists() and not force:
        raise DkimAdminError(f"refusing to overwrite {path}: its public key may be published "
                             "and signing mail (choose a new --selector to rotate, or "
                             "--force)")
    pem, record = keygen(domain, selector, key_type)
    try:
        make_private_dirs(path.parent)
        write_key(path, pem, overwrite=force)
    except FileExistsError:  # made by someone else since we looked
        raise DkimAdminError(f"refusing to overwrite {path} (use --force)") from None
    except OSError as exc:
        raise DkimAdminError(cannot_write(path, exc, "the DKIM key")) from None
    shown_path = str(path.relative_to(folder)) if config_path is not None else str(path)
    lines = (f'[dkim.domains."{domain}"]', f'selector = "{selector}"',
             f"key = {_toml_string(shown_path)}")
    return NewKey(domain, selector, key_type, path, record, lines, replaces)


def _toml_string(text: str) -> str:
    """A TOML basic string (paths may hold backslashes or quotes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_new_key(new: NewKey) -> list[str]:
    bits = "RSA 2048" if new.key_type is KeyType.RSA else "Ed25519"
    lines = [f"wrote {new.path} ({bits}, mode 0600)", "",
             "1. Publish this TXT record in DNS:", "", f"   {new.record}", "",
             "2. Then add to the config (or change the existing table):", ""]
    lines += [f"   {line}" for line in new.config_lines]
    if new.key_type is KeyType.ED25519:
        lines += ["", "   Receivers that do not know Ed25519 (RFC 8463) ignore its signature:"
                  " keep an RSA key", "   for this domain too."]
    if new.replaces is not None:
        lines += ["", f"   The config signs with selector {new.replaces!r} now: publish the new "
                  "record, wait for it", "   to be visible (the TTL), switch the selector, "
                  f"and keep {new.replaces!r} published a few days."]
    lines += ["", "3. Restart the daemon (or start it): it loads the key at start-up."]
    return lines


# -- show -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyStatus:
    domain: str
    selector: str | None = None       # None: the domain has no key (its mail is not signed)
    path: Path | None = None
    key_type: str | None = None
    record: str | None = None
    problems: tuple[str, ...] = ()


def key_statuses(config: Config) -> list[KeyStatus]:
    """Each local domain: its key, the record that key needs, and what is wrong with it."""
    out: list[KeyStatus] = []
    for domain in config.domains:
        setting = config.dkim.get(domain)
        if setting is None:
            out.append(KeyStatus(domain))
            continue
        problems: list[str] = []
        key_type = record = None
        try:
            key = DkimKey.load(setting.key, domain, setting.selector)
            key_type = key.key_type.value
            record = txt_record(key.domain, key.selector, key.private_pem)
            mode = key_file_problem(setting.key)
            if mode is not None:
                problems.append(mode)
        except OSError as exc:
            problems.append(f"{setting.key}: cannot read: {exc.strerror or exc}")
        except DkimError as exc:
            problems.append(f"{setting.key}: {exc}")
        out.append(KeyStatus(domain, setting.selector, setting.key, key_type, record,
                             tuple(problems)))
    return out


def key_problems(config: Config) -> list[str]:
    """For check-config: each key that cannot sign, or that others can read."""
    return [f'dkim.domains."{s.domain}".key: {p}' for s in key_statuses(config)
            for p in s.problems]


def render_statuses(statuses: list[KeyStatus], config_path: Path | None = None) -> list[str]:
    lines: list[str] = []
    for s in statuses:
        if s.selector is None:
            keygen = admin_command("dkim", "keygen", s.domain, config=config_path)
            lines.append(f"{s.domain}: not signed (no key; `{keygen}` makes one)")
            continue
        lines.append(f"{s.domain}:")
        lines.append(f"  selector:  {s.selector}")
        lines.append(f"  key:       {s.path}")
        if s.key_type is not None:
            lines.append(f"  type:      {s.key_type}")
        if s.record is not None:
            lines.append(f"  record:    {s.record}")
        lines.append("  status:    " + ("OK (mode 0600 or stricter)" if not s.problems
                                        else "PROBLEM: " + "; ".join(s.problems)))
    return lines
