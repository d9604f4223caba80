"""User directories: the protocol, password hashing, and backends found via entry points."""

from mailkeep.directory.base import Account, DirectoryError, UserDirectory, load_directory

__all__ = ["Account", "DirectoryError", "UserDirectory", "load_directory"]
