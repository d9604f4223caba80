"""Outbound queue and delivery: not built yet. Non-local recipients are refused (5.7.1)."""
