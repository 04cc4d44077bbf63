"""The train samplers: the shuffled order a plain ``DataLoader(shuffle=True)`` gives, resumable mid-epoch.

A resumed run must see the samples the uninterrupted run would have seen, in the same order, and
no sample of the current epoch twice. Each sampler here draws an epoch's order exactly as torch /
Lightning do without it, remembers what it drew, and on resume continues that order after the
samples training already consumed:

- :class:`ResumableRandomSampler` (one process): like ``RandomSampler``, each epoch's permutation
  comes from a 64-bit seed drawn from torch's global generator when the epoch's iteration starts;
- :class:`ResumableDistributedSampler` (DDP): like the ``DistributedSampler`` Lightning would
  insert, each epoch's permutation comes from ``seed + epoch``; every rank takes its strided share.

Only the caller knows how many samples training consumed (a ``DataLoader`` with workers draws
indices ahead of training), so ``state_dict(consumed=…)`` is told.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DistributedSampler, RandomSampler


def _draw_seed() -> int:
    # the draw RandomSampler makes from torch's global generator when an epoch's iteration starts
    return int(torch.empty((), dtype=torch.int64).random_().item())


class ResumableRandomSampler(RandomSampler):
    """``RandomSampler`` without replacement whose position can be saved and restored.

    Uninterrupted, it yields exactly what ``RandomSampler(data_source)`` yields under the same
    global torch RNG state (it draws the same seed at the same moment: the first ``next`` of an
    epoch's iterator). A subclass changes the order drawn from that seed (:meth:`order`) and what
    identifies its data in a checkpoint (:meth:`identity`, :meth:`mismatch`); resuming stays here.

    Args:
        data_source: the train dataset (only its length is used).
    """

    #: names this sampler's order in checkpoints; a state of another kind is refused
    kind = "random"

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.epoch = 0
        #: seed of the current epoch's permutation; None before the first epoch starts
        self.seed: int | None = None
        self._resume_at: tuple[int, int] | None = None  # (seed, samples to skip) for the next epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; only recorded (the seed comes from the global RNG)."""
        self.epoch = epoch

    def order(self, seed: int) -> list[int]:
        """The epoch's order drawn from ``seed``: ``RandomSampler``'s permutation."""
        return torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(seed)).tolist()

    def identity(self) -> dict[str, int]:
        """What a checkpoint's state must match to continue this order (the split's length)."""
        return {"length": len(self.data_source)}

    @staticmethod
    def mismatch(saved: dict[str, int], ours: dict[str, int]) -> str:
        return f"{saved['length']} samples and this run's has {ours['length']}"

    def __iter__(self) -> Iterator[int]:
        # a generator: the seed is drawn at the epoch's first `next`, where RandomSampler draws it
        resume, self._resume_at = self._resume_at, None
        seed, start = resume if resume is not None else (_draw_seed(), 0)
        self.seed = seed
        yield from self.order(seed)[start:]

    def state_dict(self, *, consumed: int) -> dict[str, Any]:
        """The sampler's position after training consumed ``consumed`` samples of the current epoch."""
        return {
            "kind": self.kind,
            **self.identity(),
            "epoch": self.epoch,
            "seed": self.seed,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch's order after its consumed samples (the next ``__iter__`` only).

        Raises:
            ValueError: the state belongs to another sampler kind or to other data.
        """
        check_state(state, self)
        if state["seed"] is not None and 0 < state["consumed"] < len(self):
            self._resume_at = (int(state["seed"]), int(state["consumed"]))


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, padded, ``seed + epoch``) whose position can be saved and restored.

    Uninterrupted, it yields what the ``DistributedSampler`` Lightning inserts for a shuffled train
    loader yields (Lightning leaves a ``DistributedSampler`` in place instead of wrapping it). A
    subclass changes this rank's share of an epoch (:meth:`share`) and what identifies its data.
    """

    kind = "distributed"

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def share(self) -> list[int]:
        """This rank's samples of the current epoch, in order (``DistributedSampler``'s)."""
        return list(super().__iter__())

    def identity(self) -> dict[str, int]:
        return {"length": len(self.dataset)}

    mismatch = staticmethod(ResumableRandomSampler.mismatch)

    def __iter__(self) -> Iterator[int]:
        indices = self.share()
        resume, self._resume_at = self._resume_at, None
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter(indices[start:])

    def state_dict(self, *, consumed: int) -> dict[str, Any]:
        """The position after this rank's training consumed ``consumed`` samples of the current epoch."""
        return {
            "kind": self.kind,
            **self.identity(),
            "epoch": self.epoch,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed samples (when Lightning sets that epoch again).

        Raises:
            ValueError: another sampler kind, other data, another seed or number of ranks.
        """
        check_state(state, self)
        if state["num_replicas"] != self.num_replicas:
            raise ValueError(
                f"the checkpoint was written by a run on {state['num_replicas']} ranks and this run has "
                f"{self.num_replicas}: the data order can only be continued on the same number of ranks "
                "(trainer.devices × trainer.num_nodes)"
            )
        if state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's train order was seeded with {state['seed']} and this run's with "
                f"{self.seed}: resume with the run's own seed"
            )
        if 0 < state["consumed"] < self.num_samples:
            self._resume_at = (int(state["epoch"]), int(state["consumed"]))


#: the train samplers' kinds (the grouped ones: `rsrefseg.data.grouped_sampler`)
KINDS = ("random", "distributed", "grouped_random", "grouped_distributed")


def check_state(state: dict[str, Any], sampler: ResumableRandomSampler | ResumableDistributedSampler) -> None:
    """Fail clearly unless ``state`` was saved by a sampler of ``sampler``'s kind over the same data."""
    if not isinstance(state, dict) or state.get("kind") not in KINDS:
        raise ValueError(f"not a train-sampler state: {state!r}")
    if state["kind"] != sampler.kind:
        raise ValueError(
            f"the checkpoint's train order comes from a {state['kind']} sampler and this run uses a "
            f"{sampler.kind} one (one process vs DDP): resume on the same number of processes"
        )
    ours = sampler.identity()
    saved = {key: state.get(key) for key in ours}
    if saved != ours:
        raise ValueError(
            f"the checkpoint's train split had {sampler.mismatch(saved, ours)}: resume with the same data "
            "(data.sizes, data.root, …)"
        )
