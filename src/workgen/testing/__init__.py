"""Tools for testing code built on workgen, and backends built for it.

- :func:`check_backend`: the backend conformance suite. It drives a backend through the seam the
  requestor uses (market, activity, storage, payment) and checks what every backend must do.
  It passes on the local network, on a yagna daemon, and on :class:`MockBackend`.
- :class:`MockBackend`: an in-memory backend for fast tests of requestor logic (workers,
  retries, budgets, faults) without processes or sandboxes.
"""

from .conformance import CHECKS, ConformanceError, check_backend
from .mock import DEFAULT_PROGRAMS, Exit, Machine, MockBackend, MockProvider

__all__ = [
    "CHECKS", "ConformanceError", "DEFAULT_PROGRAMS", "Exit", "Machine", "MockBackend",
    "MockProvider", "check_backend",
]
