"""Maildir++ storage compatible with Dovecot (see docs/rfc-index.md, Maildir)."""

from mailkeep.store.maildir.store import MaildirStore

__all__ = ["MaildirStore"]
