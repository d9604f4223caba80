"""Mail storage: the MailStore protocol, the Maildir implementation and the memory oracle."""

from mailkeep.store.base import (
    Appended,
    DeliveryError,
    DiskFull,
    FlagMode,
    FolderExists,
    FolderInfo,
    FolderNotAllowed,
    FolderSnapshot,
    InvalidName,
    KeywordLimit,
    Maildrop,
    MaildropLock,
    MailStore,
    MessageGone,
    MessageInfo,
    MessageRecord,
    NewMessage,
    NoSuchFolder,
    OverQuota,
    StoreError,
    StoreFull,
    StoreRefusal,
    Usage,
)

__all__ = ["Appended", "DeliveryError", "DiskFull", "FlagMode", "FolderExists", "FolderInfo",
           "FolderNotAllowed", "FolderSnapshot", "InvalidName", "KeywordLimit",
           "MailStore", "Maildrop", "MaildropLock", "MessageGone", "MessageInfo",
           "MessageRecord", "NewMessage", "NoSuchFolder", "OverQuota", "StoreError", "StoreFull",
           "StoreRefusal", "Usage"]
