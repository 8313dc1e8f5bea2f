"""Errors of the reader study. Each carries the HTTP status the API answers with, and names the
field or item at fault so a reader or admin knows what to fix."""

from __future__ import annotations


class StudyError(ValueError):
    status = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidAnswer(StudyError):
    """An answer outside the question's allowed values (or a required one missing)."""


class NotAssigned(StudyError):
    """The item is not in this reader's list."""


class EmptyStudy(StudyError):
    """A study was asked for with no images."""


class Locked(StudyError):
    """Stage-1 answers are locked (or not locked yet where that is required)."""

    status = 409


class AccessDenied(StudyError):
    """Unknown or revoked token, or a token of the wrong kind or study."""

    status = 403


class NotFound(StudyError):
    status = 404


class ImportProblems(StudyError):
    """Every problem found in an import file (not just the first); nothing was written."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in {path}; nothing imported:\n{shown}{more}")
