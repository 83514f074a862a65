"""Domain errors.

Every error the engine raises on bad input is an ``OrionError`` that carries a machine-readable
``reason`` (UPPER_SNAKE, documented in docs/errors.md), a ``category`` that the API layer maps to
a gRPC status code in exactly one place, and optional per-field ``violations``.

The reference API raises plain ``ValueError`` with fixed wording; our errors subclass
``ValueError`` where the reference did and keep its messages, so ``except ValueError`` and
message checks written against the reference keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ErrorCategory(Enum):
    """What kind of failure: the API layer turns each into one gRPC status code."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"


@dataclass(frozen=True)
class Violation:
    """One problem with one field of a request (becomes a google.rpc.BadRequest entry)."""

    field: str
    description: str
    reason: str = ""


@dataclass
class OrionError(Exception):
    """Base of all domain errors."""

    message: str
    reason: str = "ORION_ERROR"
    category: ErrorCategory = ErrorCategory.INVALID_ARGUMENT
    violations: list[Violation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message

    def __hash__(self) -> int:  # dataclass eq would make exceptions unhashable
        return id(self)


class InvalidArgumentError(OrionError, ValueError):
    """The request itself is wrong (bad DAG, unknown strategy, bad value)."""

    def __init__(self, message: str, reason: str = "INVALID_ARGUMENT",
                 violations: list[Violation] | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason, ErrorCategory.INVALID_ARGUMENT,
                         list(violations or []), dict(metadata or {}))


class NotFoundError(OrionError, ValueError):
    """A named orion, star, edge or device does not exist."""

    def __init__(self, message: str, reason: str = "NOT_FOUND",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason, ErrorCategory.NOT_FOUND, [], dict(metadata or {}))


class AlreadyExistsError(OrionError, ValueError):
    """An id is already taken."""

    def __init__(self, message: str, reason: str = "ALREADY_EXISTS",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason, ErrorCategory.ALREADY_EXISTS, [], dict(metadata or {}))


class FailedPreconditionError(OrionError, ValueError):
    """The request is well formed but the current state forbids it (invariants I1–I3)."""

    def __init__(self, message: str, reason: str = "FAILED_PRECONDITION",
                 violations: list[Violation] | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason, ErrorCategory.FAILED_PRECONDITION,
                         list(violations or []), dict(metadata or {}))


class UnavailableError(OrionError, RuntimeError):
    """No device can take the work right now."""

    def __init__(self, message: str, reason: str = "NO_DEVICE_AVAILABLE",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason, ErrorCategory.UNAVAILABLE, [], dict(metadata or {}))


class EditRejectedError(OrionError, ValueError):
    """An atomic edit batch was refused and rolled back.

    ``edit_index`` names the operation that failed and ``rule`` the rule it broke (I1, I2, I3,
    NOT_FOUND, ALREADY_EXISTS, INVALID); the category is the underlying error's, so a missing
    star is still NOT_FOUND and an invariant breach FAILED_PRECONDITION.
    """

    def __init__(self, cause: OrionError, edit_index: int, rule: str) -> None:
        message = f"Edit {edit_index} rejected ({rule}): {cause.message}"
        super().__init__(message, cause.reason, cause.category,
                         [Violation(f"edits[{edit_index}]", cause.message, cause.reason)],
                         {**cause.metadata, "edit_index": str(edit_index), "rule": rule})
        self.edit_index = edit_index
        self.rule = rule
        self.cause = cause
