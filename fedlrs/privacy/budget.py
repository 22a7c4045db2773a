"""A privacy budget, checked before every release."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from fedlrs.privacy.accountants import Accountant, compute_epsilon, validate_accountant, validate_delta
from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger


class BudgetExceededError(RuntimeError):
    """A release would take epsilon past the budget; nothing was recorded or released."""


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """The (epsilon, delta) a run may spend, measured with ``accountant``.

    Examples
    --------
    >>> budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    >>> budget.check(Ledger(), []) == 0.0
    True
    """

    epsilon: float
    delta: float
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) \
                or not math.isfinite(self.epsilon) or self.epsilon <= 0:
            raise ValueError(f"epsilon == {self.epsilon!r}, must be a finite number > 0.")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", validate_delta(self.delta))
        validate_accountant(self.accountant)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"epsilon", "delta", "accountant"}``."""
        return {"epsilon": self.epsilon, "delta": self.delta, "accountant": self.accountant}

    def check(self, ledger: Ledger, next_events: DpEvent | Iterable[DpEvent]) -> float:
        """Raise :class:`BudgetExceededError` if ``ledger + next_events`` would exceed the budget.

        Pure: reads the ledger, writes nothing. Call it before computing or
        recording a release. ``epsilon(ledger.events + next_events, delta) <=
        self.epsilon`` must hold; returns that epsilon after the release.
        """
        upcoming = [next_events] if isinstance(next_events, DpEvent) else list(next_events)
        after = compute_epsilon([*ledger.events, *upcoming], delta=self.delta,
                                accountant=self.accountant)
        if after.epsilon > self.epsilon:
            now = compute_epsilon(ledger.events, delta=self.delta, accountant=self.accountant)
            raise BudgetExceededError(
                f"release refused: epsilon is {now.epsilon:.4f} now and would be "
                f"{after.epsilon:.4f} after it, budget is epsilon == {self.epsilon} at "
                f"delta == {self.delta} ({after.accountant_used} accountant).")
        return after.epsilon
