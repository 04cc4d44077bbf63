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
    epoch's iterator).

    Args:
        data_source: the train dataset (only its length is used).
    """

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.epoch = 0
        #: seed of the current epoch's permutation; None before the first epoch starts
        self.seed: int | None = None
        self._resume_at: tuple[int, int] | None = None  # (seed, samples to skip) for the next epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; only recorded (the seed comes from the global RNG)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        resume, self._resume_at = self._resume_at, None
        seed, start = resume if resume is not None else (_draw_seed(), 0)
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()[start:]

    def state_dict(self, *, consumed: int) -> dict[str, Any]:
        """The sampler's position after training consumed ``consumed`` samples of the current epoch."""
        return {
            "kind": "random",
            "length": len(self.data_source),
            "epoch": self.epoch,
            "seed": self.seed,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch's order after its consumed samples (the next ``__iter__`` only).

        Raises:
            ValueError: the state belongs to another sampler kind or a dataset of another length.
        """
        _check_state(state, kind="random", length=len(self.data_source))
        if state["seed"] is not None and 0 < state["consumed"] < state["length"]:
            self._resume_at = (int(state["seed"]), int(state["consumed"]))


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, padded, ``seed + epoch``) whose position can be saved and restored.

    Uninterrupted, it yields what the ``DistributedSampler`` Lightning inserts for a shuffled train
    loader yields (Lightning leaves a ``DistributedSampler`` in place instead of wrapping it).
    """

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        resume, self._resume_at = self._resume_at, None
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter(indices[start:])

    def state_dict(self, *, consumed: int) -> dict[str, Any]:
        """The position after this rank's training consumed ``consumed`` samples of the current epoch."""
        return {
            "kind": "distributed",
            "length": len(self.dataset),
            "epoch": self.epoch,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed samples (when Lightning sets that epoch again).

        Raises:
            ValueError: another sampler kind, dataset length, seed or number of ranks.
        """
        _check_state(state, kind="distributed", length=len(self.dataset))
        check_same_ranks_and_seed(state, num_replicas=self.num_replicas, seed=self.seed)
        if 0 < state["consumed"] < self.num_samples:
            self._resume_at = (int(state["epoch"]), int(state["consumed"]))


def check_same_ranks_and_seed(state: dict[str, Any], *, num_replicas: int, seed: int) -> None:
    """A distributed train order continues only on as many ranks, with the seed it was drawn with.

    Raises:
        ValueError: naming the checkpoint's and this run's rank count or seed.
    """
    if state["num_replicas"] != num_replicas:
        raise ValueError(
            f"the checkpoint was written by a run on {state['num_replicas']} ranks and this run has "
            f"{num_replicas}: the data order can only be continued on the same number of ranks "
            "(trainer.devices × trainer.num_nodes)"
        )
    if state["seed"] != seed:
        raise ValueError(
            f"the checkpoint's train order was seeded with {state['seed']} and this run's with "
            f"{seed}: resume with the run's own seed"
        )


def _check_state(state: dict[str, Any], *, kind: str, length: int) -> None:
    if not isinstance(state, dict) or state.get("kind") not in ("random", "distributed"):
        raise ValueError(f"not a train-sampler state: {state!r}")
    if state["kind"] != kind:
        raise ValueError(
            f"the checkpoint's train order comes from a {state['kind']} sampler and this run uses a "
            f"{kind} one (one process vs DDP): resume on the same number of processes"
        )
    if state["length"] != length:
        raise ValueError(
            f"the checkpoint's train split had {state['length']} samples and this run's has {length}: "
            "resume with the same data (data.sizes, data.root, …)"
        )
