"""Limits shared by every door: auth-failure throttling and connection budgets."""

from mailkeep.security.budget import ConnectionBudget
from mailkeep.security.throttle import AuthThrottle, Verdict

__all__ = ["AuthThrottle", "ConnectionBudget", "Verdict"]
