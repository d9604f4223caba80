"""Mail storage: the MailStore protocol, the Maildir implementation and the memory oracle."""

from mailkeep.store.base import (
    DeliveryError,
    Maildrop,
    MaildropLock,
    MailStore,
    MessageGone,
    MessageInfo,
    StoreError,
)

__all__ = ["DeliveryError", "MailStore", "Maildrop", "MaildropLock", "MessageGone", "MessageInfo",
           "StoreError"]
