"""The yagna backend: workgen's requestor on a real Golem daemon (see :mod:`.backend`)."""

from .backend import Yagna

__all__ = ["Yagna"]
