"""What a trial reports to the pruner after each epoch: its best objective so far.

The harness keeps a run's best epoch (its weights and its metrics), so a trial stopped now
would end with its best value so far, not its latest. Reporting that running best keeps the
two sides of the pruner's comparison alike: the median pruner sets a trial's best value
against the other trials' reported values at the same epoch, and with the latest values
those are the finished trials' later, overfitted epochs (a validation loss that climbs
again after its minimum), which lifts the median and lets poor trials run to the end.
"""

from __future__ import annotations

import math
from typing import Literal


class BestSoFar:
    """One trial's running best of the objective, fed each epoch's value in epoch order
    (a resumed trial's log is read again from its start, so it is fed from epoch 1)."""

    def __init__(self, direction: Literal["maximize", "minimize"]) -> None:
        self.maximize = direction == "maximize"
        self.best = math.nan

    def __call__(self, value: float) -> float:
        """The value to report for this epoch: the best so far, NaN until one is finite."""
        if not math.isnan(value) and (
            math.isnan(self.best) or (value > self.best if self.maximize else value < self.best)
        ):
            self.best = value
        return self.best
