"""The exceptions users can cause.

One type per layer: :class:`SonoInputError` for bad input files and arguments (the CLI turns it
into exit code 2 and one ``error:`` line, the server into HTTP 4xx). Its message names the input
and the problem.
"""

from __future__ import annotations

import os


class SonoInputError(ValueError):
    """An input file or argument SonoVLM cannot use.

    Args:
        source: what the input was (a path, a parameter name).
        problem: what is wrong with it, in words a user understands.
    """

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class ModelLoadError(RuntimeError):
    """A backbone or checkpoint could not be loaded (missing weights, wrong file, offline hub)."""
