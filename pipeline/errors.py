"""One error type for everything a user can fix: bad packs, bad params, missing sources.

Every message is one line: ``<file>: <field>: <problem> (<fix>)``, so a failing
`dvc repro` or CLI call says exactly where to look.
"""

from __future__ import annotations

import difflib
from pathlib import Path


class PolyalignError(Exception):
    """A user-fixable problem, rendered as a single line."""

    def __init__(self, file: str | Path, field: str, problem: str, fix: str = ""):
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        msg = f"{self.file}: {self.field}: {self.problem}"
        if self.fix:
            msg += f" ({self.fix})"
        return " ".join(msg.split())


def did_you_mean(word: str, choices) -> str:
    """'did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
