"""Sans-IO protocol pieces: bytes and values in, decisions and replies out. No I/O here."""
