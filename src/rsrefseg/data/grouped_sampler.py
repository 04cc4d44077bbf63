"""Sample orders that keep the sentences of one image together (``data.group_sentences``).

Refer-style datasets (RRSIS-D) describe one image with several sentences. When a batch holds k
sentences of one image, the image encoders (most of the model's FLOPs) can run once for them
instead of k times: the collate passes each distinct image once with ``image_index``
(`rsrefseg.data.shared_images`). The samplers here order an epoch so that this happens:

- the *image groups* (the samples of one image file, `ImageGroups`) are shuffled, each group's
  sentences are shuffled within it, and the groups are laid end to end. The loader cuts that
  stream into full batches of ``batch_size`` as before, so a step still sees ``batch_size``
  sentences: a batch holds whole groups, and only a group straddling two batches is encoded in
  both (with k sentences per image, a batch of B sees about B / k + 1 images);
- one process (`GroupedRandomSampler`): the epoch's seed is drawn from torch's global generator
  when the epoch's iteration starts, as `~rsrefseg.data.resumable_sampler.ResumableRandomSampler`
  does; with one sentence per image the order is exactly that sampler's;
- DDP (`GroupedDistributedSampler`): the epoch's order comes from ``seed + epoch``; the groups are
  dealt out in that order, each to the rank holding the fewest sentences so far, so no image's
  sentences are split across ranks. Ranks must take equal numbers of steps: each yields
  ``(n - (ranks - 1) × largest group) // ranks`` samples and leaves the rest of its share out of
  that epoch (a few samples, other ones every epoch);
- evaluation (`GroupedSequentialSampler`): no randomness, the groups in the order their first
  sample has in the split, each group's samples in split order. Scores are order-independent.

The train samplers resume mid-epoch like the ungrouped ones: ``state_dict(consumed=…)`` records
the epoch's seed and how many samples training consumed; the next iteration continues after them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from rsrefseg.data.resumable_sampler import ResumableDistributedSampler, ResumableRandomSampler


@dataclass(frozen=True)
class ImageGroups:
    """Which samples of a dataset share an image.

    Attributes:
        group_of: n long, the group of each sample; groups are numbered in order of first appearance.
        count: number of groups (distinct images).
        largest: the most samples any group has.
    """

    group_of: Tensor
    count: int
    largest: int

    @classmethod
    def of(cls, dataset: Any) -> ImageGroups:
        """The groups of a dataset with ``image_keys()`` (one hashable per sample: equal keys, one
        image); a dataset without it has one image per sample (the synthetic benchmark)."""
        length = len(dataset)
        keys = dataset.image_keys() if hasattr(dataset, "image_keys") else None
        if keys is None:
            return cls(group_of=torch.arange(length), count=length, largest=min(1, length))
        return cls.from_keys(keys, length=length, name=repr(dataset))

    @classmethod
    def from_keys(cls, keys: Sequence[Hashable], *, length: int | None = None, name: str = "") -> ImageGroups:
        """Groups from one image key per sample.

        Raises:
            ValueError: the dataset gave another number of keys than it has samples.
        """
        if length is not None and len(keys) != length:
            raise ValueError(f"{name or 'the dataset'} gave {len(keys)} image keys for {length} samples")
        ids: dict[Hashable, int] = {}
        group_of = torch.tensor([ids.setdefault(key, len(ids)) for key in keys], dtype=torch.long)
        largest = int(torch.bincount(group_of).max()) if len(keys) else 0
        return cls(group_of=group_of, count=len(ids), largest=largest)

    def __len__(self) -> int:
        return len(self.group_of)

    def shuffled(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random order of the samples, each group's samples together.

        Draws ``randperm(count)`` (the groups' order) first, then ``randperm(n)`` (the order within
        each group): with one sample per group the order is ``randperm(n)`` under the same seed,
        the ungrouped samplers' order.

        Returns:
            The samples' order (n long) and the groups' order (count long).
        """
        n = len(self.group_of)
        group_order = torch.randperm(self.count, generator=generator)
        within = torch.randperm(n, generator=generator)
        rank = torch.empty_like(group_order)
        rank[group_order] = torch.arange(self.count)
        # sort by (the group's position, a random tie-break): exact in int64 for any n below 3e9
        return torch.argsort(rank[self.group_of] * n + within), group_order

    def sequential(self) -> Tensor:
        """The groups in order of first appearance, each group's samples in dataset order (n long)."""
        return torch.argsort(self.group_of, stable=True)

    def deal(self, order: Tensor, group_order: Tensor, *, ranks: int, rank: int) -> list[int]:
        """Rank ``rank``'s share of ``order``: whole groups, dealt in ``group_order`` to the least loaded.

        Every rank's share is cut to the same length, ``(n - (ranks - 1) × largest) // ranks``: the
        greedy deal keeps the loads within ``largest`` of each other, so every rank has that many.
        """
        loads = [0] * ranks
        owner = torch.empty(self.count, dtype=torch.long)
        sizes = torch.bincount(self.group_of, minlength=self.count).tolist()
        for group in group_order.tolist():
            least = min(range(ranks), key=loads.__getitem__)
            owner[group] = least
            loads[least] += sizes[group]
        mine = order[owner[self.group_of[order]] == rank]
        return mine[: self.per_rank(ranks)].tolist()

    def per_rank(self, ranks: int) -> int:
        """Samples every rank yields per epoch under `deal`."""
        n = len(self.group_of)
        return n if ranks == 1 else max(0, (n - (ranks - 1) * self.largest) // ranks)

    def describe(self) -> dict[str, int]:
        return {"samples": len(self.group_of), "groups": self.count}


class GroupedRandomSampler(ResumableRandomSampler):
    """One process: each epoch, the image groups in random order, resumable mid-epoch.

    Args:
        dataset: the train dataset (its ``image_keys()`` decide the groups, see `ImageGroups.of`).
    """

    kind = "grouped_random"

    def __init__(self, dataset: Any) -> None:
        super().__init__(dataset)
        self.groups = ImageGroups.of(dataset)

    def order(self, seed: int) -> list[int]:
        return self.groups.shuffled(torch.Generator().manual_seed(seed))[0].tolist()

    def identity(self) -> dict[str, int]:
        return self.groups.describe()

    @staticmethod
    def mismatch(saved: dict[str, int], ours: dict[str, int]) -> str:
        return (
            f"{saved['samples']} samples of {saved['groups']} images and this run's has "
            f"{ours['samples']} of {ours['groups']}"
        )


class GroupedDistributedSampler(ResumableDistributedSampler):
    """DDP: each epoch (``seed + epoch``), this rank's whole image groups in random order, resumable.

    A `DistributedSampler`, so Lightning leaves it in place instead of inserting its own.

    Args:
        dataset: the train dataset (its ``image_keys()`` decide the groups, see `ImageGroups.of`).
        num_replicas: number of ranks.
        rank: this rank.
        seed: the run's seed (``seed_everything``'s).

    Raises:
        ValueError: the split is too small to give every rank a sample.
    """

    kind = "grouped_distributed"
    mismatch = staticmethod(GroupedRandomSampler.mismatch)

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        self.groups = ImageGroups.of(dataset)
        self.num_samples = self.total_size = self.groups.per_rank(num_replicas)
        if self.num_samples == 0:
            raise ValueError(
                f"{dataset!r} has {len(self.groups)} samples in {self.groups.count} images (at most "
                f"{self.groups.largest} sentences per image): too few to give each of {num_replicas} ranks "
                "whole images; set data.group_sentences=false"
            )

    def share(self) -> list[int]:
        order, group_order = self.groups.shuffled(torch.Generator().manual_seed(self.seed + self.epoch))
        return self.groups.deal(order, group_order, ranks=self.num_replicas, rank=self.rank)

    def identity(self) -> dict[str, int]:
        return self.groups.describe()


class GroupedSequentialSampler(Sampler[int]):
    """Evaluation: every sample once, the samples of one image next to each other, no randomness.

    Args:
        dataset: the split (its ``image_keys()`` decide the groups, see `ImageGroups.of`).
    """

    def __init__(self, dataset: Any) -> None:
        self.order = ImageGroups.of(dataset).sequential().tolist()

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
