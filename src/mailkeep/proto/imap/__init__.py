"""IMAP4rev1 (RFC 3501) as sans-IO pieces: syntax, MIME structure, responses, the machine."""
