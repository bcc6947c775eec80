"""Errors that mean "the user's input is wrong" (exit status 2), as opposed to bugs (tracebacks)."""
from __future__ import annotations

import os


class CaffeFileError(Exception):
    """Bad input: a file that is missing, truncated, of the wrong kind, or inconsistent with another.

    ``str(err)`` is the single line the command line prints: ``<file>: <what is wrong>``.
    """

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = " ".join(str(message).split())  # always one line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
