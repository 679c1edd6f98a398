"""The measurement group interface: one class per group, registered by name (see __init__.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run
    from quantkit.results.store import Figure, Store

# "own": compare starts nothing; the group starts the engine processes it needs itself (the replica
# sweep starts several servers)
Needs = Literal["worker", "server", "own"]
NEEDS: tuple[Needs, ...] = ("own", "server", "worker")  # the order compare runs them in for one model


class Group(ABC):
    """A measurement group: its figures are measured together, stored under one measurement key
    and reused while the key (model, engine settings, versions, hardware and the group's
    `conditions`) stays the same.

    A subclass declares `name`, `needs` and `conditions`, and implements `measure`; the hooks
    below have defaults. `conditions` is abstract on purpose: a group without it cannot be made,
    so its inputs can never be left out of its key (which would reuse stale figures)."""

    name: ClassVar[str]
    # what must run while it measures: the engine's worker (`run.worker`, every offline op in the
    # engine's own process) or its OpenAI server (`run.server`, the server users deploy)
    needs: ClassVar[Needs] = "worker"
    # order among the groups that share an engine process (lower first); memory is last, so that
    # its peak includes the work of the others
    order: ClassVar[int] = 500

    def applies(self, cfg: CompareConfig) -> bool:
        """Whether this configuration asks for the group at all (e.g. tasks only when some are named)."""
        return True

    @abstractmethod
    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        """Everything that changes this group's figures besides the model, engine settings and
        versions: its configuration and a digest of the exact inputs it sends (so edited data is
        measured again instead of reusing stale figures)."""

    def relative_to(self, run: Run) -> dict:
        """What the figures are scored against (baseline rows, reference answers), added to the key
        so that a re-measured baseline re-measures what depends on it."""
        return {}

    def anchor(self, run: Run, key: str) -> None:
        """Called once this model's key is known, before anything is measured: a reference or
        baseline records what later models are scored against (run.anchors)."""
        return None

    def is_done(self, run: Run, store: Store, key: str) -> bool:
        """Can the stored measurement be reused?"""
        return store.done(key)

    def after(self, run: Run, store: Store, key: str) -> None:
        """Called after the model's groups ran (or were found stored)."""
        return None

    @abstractmethod
    def measure(self, run: Run) -> list[Figure]:
        """The group's figures (a failure raises; compare stores it with its reason)."""
