"""The LightningDataModule shared by every dataset: splits come in as dataset factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from rsrefseg.data.file_check import DataFilesError
from rsrefseg.data.grouped_sampler import (
    GroupedDistributedSampler,
    GroupedRandomSampler,
    GroupedSequentialSampler,
)
from rsrefseg.data.resumable_sampler import ResumableDistributedSampler, ResumableRandomSampler
from rsrefseg.data.shared_images import unique_images

SPLITS = ("train", "val", "test")


def collate_referring(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape, keep everything else (sentences, ids, sizes, variable masks) as lists.

    Args:
        samples: dataset items with at least ``image`` (3×H×W), ``mask`` (1×H×W) and ``sentence``.

    Returns:
        ``image`` B×3×H×W, ``mask`` B×1×H×W, and a list of B values for every other key.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def collate_shared_images(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`collate_referring` with each distinct image once (``data.group_sentences``).

    Returns:
        ``image`` N×3×H×W (the N distinct images, see `rsrefseg.data.shared_images`),
        ``image_index`` B long (the image of each sentence), and every other key per sentence (B).
    """
    images, image_index = unique_images([s["image"] for s in samples])
    batch = collate_referring([{k: v for k, v in s.items() if k != "image"} for s in samples])
    return {"image": torch.stack(images), "image_index": image_index, **batch}


class ShuffledSentences(Dataset):
    """A view of a dataset whose sentences are permuted across samples (a seeded derangement).

    Scoring a model on it measures what ignoring the text earns: every image keeps its own mask
    but is paired with another sample's sentence.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < 2:
            raise ValueError(f"ShuffledSentences needs at least 2 samples, got {n}")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator)
        # a cyclic shift of a random order is a derangement: nobody keeps their own sentence
        self.source = torch.empty(n, dtype=torch.long)
        self.source[order] = torch.roll(order, 1)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.source)

    def image_keys(self) -> list[Any] | None:
        """The wrapped dataset's (every item keeps its own image)."""
        keys = getattr(self.dataset, "image_keys", None)
        return None if keys is None else keys()

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        donor = self.dataset[int(self.source[index])]
        item["sentence"] = donor["sentence"]
        return item


class RefSegDataModule(pl.LightningDataModule):
    """Train / val / test loaders over any referring-segmentation datasets.

    Args:
        splits: split name → zero-argument factory returning that split's Dataset (Hydra
            ``_partial_: true`` nodes), built lazily in :meth:`setup`.
        batch_size: samples per device and step.
        eval_batch_size: samples per device for val / test (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory when a GPU is present (ignored on a CPU-only machine).
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        group_names: names of the per-sample groups scored separately (e.g. expression types).
        group_key: the item key holding each sample's group name.
        shuffle_sentences_seed: seed of the derangement used by :meth:`shuffled_test_dataloader`.
        group_sentences: order batches so that an image's sentences come together and pass each
            distinct image once (``image`` N×3×S×S with ``image_index``), so the encoders run once
            per image (`rsrefseg.data.grouped_sampler`); changes which samples share a batch.
    """

    def __init__(
        self,
        *,
        splits: Mapping[str, Callable[[], Dataset]],
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        group_names: Sequence[str] = (),
        group_key: str | None = None,
        shuffle_sentences_seed: int = 0,
        group_sentences: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; expected a subset of {SPLITS}")
        self.split_factories = dict(splits)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.group_names, self.group_key = tuple(group_names), group_key
        self.shuffle_sentences_seed = shuffle_sentences_seed
        self.group_sentences = group_sentences
        self.datasets: dict[str, Dataset] = {}
        #: the sampler of the latest train loader (its position goes into checkpoints)
        self.train_sampler: TrainSampler | None = None
        self._train_sampler_state: dict[str, Any] | None = None

    def dataset(self, split: str) -> Dataset:
        """The split's dataset, built on first use; a clear error when it is missing or empty.

        A wrong data root surfaces here as the reader's FileNotFoundError, naming the path it tried
        and what it expected there; missing or unreadable files of an on-disk dataset as one error
        naming every one (the dataset reads every header when it is built).
        """
        if split not in self.datasets:
            if split not in self.split_factories:
                raise KeyError(f"no '{split}' split configured; configured: {sorted(self.split_factories)}")
            dataset = self.split_factories[split]()
            size = len(dataset)  # type: ignore[arg-type]
            if size == 0:
                raise ValueError(
                    f"the '{split}' split is empty ({dataset!r}): every sample was filtered out "
                    "(known-bad list, data.skip_samples, data.size_mismatch=skip?) or the index lists none"
                )
            if split == "train" and size < self.batch_size:
                # the train loader drops the last incomplete batch: an epoch would have no step
                raise ValueError(
                    f"the 'train' split has {size} samples, fewer than batch_size={self.batch_size} "
                    f"({dataset!r}); lower data.batch_size"
                )
            self.datasets[split] = dataset
        return self.datasets[split]

    def describe(self) -> dict[str, Any]:
        """Per-split statistics from datasets that can describe themselves (``dataset.describe()``)."""
        return {
            split: self.dataset(split).describe()  # type: ignore[attr-defined]
            for split in self.split_factories
            if hasattr(self.dataset(split), "describe")
        }

    def setup(self, stage: str | None = None) -> None:
        """Build (and so check) the stage's splits; ``fit`` builds test too when configured.

        Building an on-disk split reads every file's header, so a missing test image fails the run
        here, before the first step, not after training; the bad files of all splits are named in
        one `DataFilesError`.
        """
        wanted = {"validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        bad_files: list[DataFilesError] = []
        for split in wanted:
            if split in self.split_factories:
                try:
                    self.dataset(split)
                except DataFilesError as err:  # every split is checked before any is refused
                    bad_files.append(err)
        if len(bad_files) == 1:
            raise bad_files[0]
        if bad_files:
            raise DataFilesError("\n".join(str(err) for err in bad_files))

    def _loader(self, dataset: Dataset, *, train: bool, sampler: Sampler | None = None) -> DataLoader:
        if not train and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DistributedSampler pads ranks to equal length by repeating samples, which would count
            # them twice in the metrics; evaluation shards without repeats instead
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        elif not train and self.group_sentences:
            sampler = GroupedSequentialSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            # pinning needs an accelerator; on a CPU-only machine torch would only warn about it
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=collate_shared_images if self.group_sentences else collate_referring,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled full batches, in the order ``shuffle=True`` gave, resumable mid-epoch."""
        dataset = self.dataset("train")
        self.train_sampler = _train_sampler(dataset, grouped=self.group_sentences)
        if self._train_sampler_state is not None:
            _check_grouping(self._train_sampler_state, grouped=self.group_sentences)
            self.train_sampler.load_state_dict(self._train_sampler_state)
            self._train_sampler_state = None
        return self._loader(dataset, train=True, sampler=self.train_sampler)

    def state_dict(self) -> dict[str, Any]:
        """The train order's position, saved in every checkpoint: a resume continues the epoch after
        the samples training already consumed (none twice, none skipped)."""
        trainer = self.trainer
        sampler = self.train_sampler
        loader = trainer.train_dataloader if trainer is not None else None
        if sampler is None or getattr(loader, "sampler", None) is not sampler:
            # no fit yet, or Lightning replaced the sampler (overfit_batches): no order to continue
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress
        # a finished epoch is consumed whole (drop_last may have left a partial batch unused)
        consumed = len(sampler) if progress.is_last_batch else progress.current.processed * self.batch_size
        return {"train_sampler": sampler.state_dict(consumed=consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved train order for the next :meth:`train_dataloader` (Lightning restores before
        it builds the loaders)."""
        self._train_sampler_state = state_dict.get("train_sampler")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), train=False)

    def split_dataloader(self, split: str, *, shuffle_sentences: bool = False) -> DataLoader:
        """A deterministic evaluation loader over any split, optionally with sentences deranged."""
        dataset = self.dataset(split)
        if shuffle_sentences:
            dataset = ShuffledSentences(dataset, seed=self.shuffle_sentences_seed)
        return self._loader(dataset, train=False)


TrainSampler = (
    ResumableRandomSampler | ResumableDistributedSampler | GroupedRandomSampler | GroupedDistributedSampler
)


def _train_sampler(dataset: Dataset, *, grouped: bool = False) -> TrainSampler:
    """One process: ``RandomSampler``'s order; DDP: the order of the ``DistributedSampler`` Lightning
    would insert (seeded with ``seed_everything``'s seed), each resumable; ``grouped``: the same
    seeding, an image's sentences together (`rsrefseg.data.grouped_sampler`)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        kind = GroupedDistributedSampler if grouped else ResumableDistributedSampler
        return kind(
            dataset,
            num_replicas=dist.get_world_size(),
            rank=dist.get_rank(),
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
        )
    if grouped:
        return GroupedRandomSampler(dataset)
    return ResumableRandomSampler(dataset)  # type: ignore[arg-type]


def _check_grouping(state: Mapping[str, Any], *, grouped: bool) -> None:
    saved = str(state.get("kind", "")).startswith("grouped")
    if saved != grouped:
        raise ValueError(
            f"the checkpoint's train order was made with data.group_sentences={str(saved).lower()} and "
            f"this run has data.group_sentences={str(grouped).lower()}: the order can only be continued "
            "with the same setting"
        )
