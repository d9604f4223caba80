"""Observability: the daemon's metrics (metrics.py) and its log line formats (logformat.py)."""
