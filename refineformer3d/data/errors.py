"""The one error type of data discovery and datalists; imports nothing heavy."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DatasetError"]

_MAX_LISTED = 20


class DatasetError(ValueError):
    """A dataset, study or datalist that cannot be used; one line naming each case, file and problem."""

    def __init__(self, problems: Sequence[str], where: str = "") -> None:
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        head = f"{where}: " if where else ""
        if len(self.problems) > 1:
            head += f"{len(self.problems)} problems: "
        super().__init__(head + "; ".join(shown) + (f"; and {more} more" if more else ""))
