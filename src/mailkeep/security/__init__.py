"""Limits shared by every door: auth throttling, connection and session budgets, memory."""

from mailkeep.security.budget import ConnectionBudget
from mailkeep.security.memory import InputBudget
from mailkeep.security.sessions import SessionCounter
from mailkeep.security.throttle import AuthThrottle, Verdict

__all__ = ["AuthThrottle", "ConnectionBudget", "InputBudget", "SessionCounter", "Verdict"]
