"""The error types of data discovery, datalists and study checks; imports nothing heavy."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["DatasetError", "InputError"]

_MAX_LISTED = 20


def _one_line(problems: Sequence[str], where: str) -> str:
    shown = list(problems)[:_MAX_LISTED]
    more = len(problems) - len(shown)
    head = f"{where}: " if where else ""
    if len(problems) > 1:
        head += f"{len(problems)} problems: "
    return head + "; ".join(shown) + (f"; and {more} more" if more else "")


class DatasetError(ValueError):
    """A dataset, study or datalist that cannot be used; one line naming each case, file and problem."""

    def __init__(self, problems: Sequence[str], where: str = "") -> None:
        self.problems = list(problems)
        super().__init__(_one_line(self.problems, where))


class InputError(SystemExit):
    """Bad input met while a bundle runs: one line on stderr and exit status 2, no traceback.

    MONAI's config parser wraps every exception of a ``$`` expression in ``RuntimeError("Failed to evaluate ...")``,
    so a ``ValueError`` would end ``python -m monai.bundle run`` with a line that names no study. ``SystemExit`` passes
    through unwrapped (Ignite and the parser catch ``Exception``); :attr:`message` keeps the line for callers that
    catch it. Raise it with :meth:`printed`, which writes the line first (``SystemExit(2)`` prints nothing).

    Args:
        problems: one line per problem, each naming the study and the file (or one string).
        where: what was being checked (a dataset folder, "inference").
    """

    def __init__(self, problems: str | Sequence[str], where: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.message = _one_line(self.problems, where)
        super().__init__(2)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def printed(cls, problems: str | Sequence[str], where: str = "") -> InputError:
        """The error, after writing ``error: <its line>`` to stderr."""
        error = cls(problems, where)
        print(f"error: {error}", file=sys.stderr, flush=True)
        return error
