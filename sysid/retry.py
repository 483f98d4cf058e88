"""Retrying what fails for a moment: lost database connections, deadlocks, pre-empted jobs.

One small policy for the worker, in one place: :func:`is_transient` says whether an error (an
exception or a job's recorded error message) is worth trying again, and :class:`RetryBudget`
bounds the attempts and spaces them with a randomised exponential back-off. (The schemas layer's
reconnect-and-retry of single database calls can share :data:`TRANSIENT_PATTERNS`.)
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable

__all__ = ["TRANSIENT_PATTERNS", "RetryBudget", "backoff_seconds", "is_transient"]

#: error texts of failures that pass: MySQL/MariaDB and PostgreSQL connection losses, deadlocks,
#: lock wait timeouts, serialisation failures, a server restarting, a job killed by a scheduler
TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"lost connection",
    r"server has gone away",
    r"can't connect to",
    r"connection (?:was )?(?:refused|reset|lost|closed)",
    r"broken pipe",
    r"server closed the connection",
    r"terminating connection",
    r"the database system is (?:starting up|shutting down|in recovery mode)",
    r"deadlock",
    r"lock wait timeout",
    r"could not serialize access",
    r"\(10[45]\d,",  # MySQL client errors 1040 (too many connections) ... 1053 (shutdown)
    r"\(20(?:0[36]|1[34]|55),",  # 2003 can't connect, 2006 gone away, 2013/2014 lost, 2055 lost
    r"sigterm received",  # DataJoint's own handler: the job was stopped, not wrong
    r"pre-?empt",
    r"due to (?:node failure|time limit)",
)
_TRANSIENT = re.compile("|".join(TRANSIENT_PATTERNS), re.IGNORECASE)


def is_transient(error: BaseException | str | None) -> bool:
    """Whether ``error`` (an exception, or a job's recorded error message) is a passing failure.

    Args:
        error: the exception (its type name and message are looked at, and those of its cause),
            or a recorded message such as ``"OperationalError: (2013, 'Lost connection ...')"``.
    """
    if error is None:
        return False
    if isinstance(error, BaseException):
        texts = [f"{type(error).__name__}: {error}"]
        if error.__cause__ is not None:
            texts.append(f"{type(error.__cause__).__name__}: {error.__cause__}")
        return any(_TRANSIENT.search(text) for text in texts)
    return bool(_TRANSIENT.search(str(error)))


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 30.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``min(base**attempt, cap)``, jittered ±50 %.

    The jitter keeps workers that failed together (a server restart) from retrying together.
    """
    return min(base**attempt, cap) * random.uniform(0.5, 1.5)


class RetryBudget:
    """At most ``limit`` retries per subject (a job key, or the worker's database calls).

    Args:
        limit: retries allowed per subject before giving up (>= 0).

    Example::

        budget = RetryBudget(3)
        if budget.allow(key):      # True at most 3 times for this key
            retry(key)
    """

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"retry limit must be >= 0, got {limit}")
        self.limit = limit
        self._used: dict[Hashable, int] = {}

    def allow(self, subject: Hashable = None) -> bool:
        """Count one retry of ``subject``; False once its ``limit`` retries are used up."""
        used = self._used.get(subject, 0)
        if used >= self.limit:
            return False
        self._used[subject] = used + 1
        return True

    def used(self, subject: Hashable = None) -> int:
        """Retries of ``subject`` counted so far."""
        return self._used.get(subject, 0)

    def reset(self, subject: Hashable = None) -> None:
        """Forget ``subject``'s retries (after it succeeded)."""
        self._used.pop(subject, None)
