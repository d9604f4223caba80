"""Mail storage: the MailStore protocol, the Maildir implementation and the memory oracle."""

from mailkeep.store.base import DeliveryError, MailStore

__all__ = ["DeliveryError", "MailStore"]
