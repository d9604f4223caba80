"""The in-memory reference store: the test oracle for the Maildir store."""

from mailkeep.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
