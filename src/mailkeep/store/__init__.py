"""Mail storage: the MailStore protocol, the Maildir implementation and the memory oracle."""

from mailkeep.store.base import (
    DeliveryError,
    FlagMode,
    FolderExists,
    FolderInfo,
    FolderNotAllowed,
    FolderSnapshot,
    ImapStore,
    InvalidName,
    KeywordLimit,
    Maildrop,
    MaildropLock,
    MailStore,
    MessageGone,
    MessageInfo,
    MessageRecord,
    NoSuchFolder,
    StoreError,
    StoreRefusal,
)

__all__ = ["DeliveryError", "FlagMode", "FolderExists", "FolderInfo", "FolderNotAllowed",
           "FolderSnapshot", "ImapStore", "InvalidName", "KeywordLimit", "MailStore",
           "Maildrop", "MaildropLock", "MessageGone", "MessageInfo", "MessageRecord",
           "NoSuchFolder", "StoreError", "StoreRefusal"]
