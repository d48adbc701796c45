"""Fork safety: the live objects of one kind, each told when a forked child starts.

A pool, its event bus and its endpoint router hold locks, threads and sockets that a
child process must not share with its parent. Each class keeps its live instances in a
:class:`ForkRegistry`; in the child, ``os.register_at_fork`` calls every live one's
``_after_fork_in_child()``.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol, TypeVar


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


T = TypeVar("T", bound=_ForkAware)


class ForkRegistry(weakref.WeakSet[T]):
    """A weak set of live objects; in a forked child, :meth:`after_fork` runs for each one
    (registered with ``os.register_at_fork`` when the registry is made)."""

    def __init__(self) -> None:
        super().__init__()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.after_fork)

    def after_fork(self) -> None:
        """Call ``_after_fork_in_child()`` on every live object; none may break the child."""
        for obj in list(self):
            try:
                obj._after_fork_in_child()
            except Exception:  # pragma: no cover - must never break the child
                pass
