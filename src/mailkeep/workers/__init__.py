"""Several worker processes serving the same listeners (`workers = N`).

supervisor.py forks the workers and keeps them running; coordinator.py holds, in the parent,
the counters every worker must share (connections per address, login failures, IMAP
sessions per user, message rates); link.py is a worker's side of it: objects with the same
methods as the local counters, answered by the parent over a socketpair.
"""
