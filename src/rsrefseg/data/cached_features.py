"""``data=cached_features``: train the prompter and SAM's decoder from a feature cache (frozen mode).

The cache (:mod:`rsrefseg.data.feature_cache`, written by ``rsrefseg-features``) holds the image
encoders' output; its manifest holds the data config it was made of, which builds the splits here.
Items are that data's items without the image (sentence, masks, sizes, ids, group) plus the
image's row in the cache. A batch carries:

- ``image_encoding``: an :class:`~rsrefseg.models.rsrefseg2.ImageEncoding` of the batch's N
  distinct images (float32 tensors; SAM 2's levels are finished by the network's decoder);
- ``image_index``: B long, the row of ``image_encoding`` each sentence is about;
- ``image``: B×0×S×S, no pixels: scoring and logging read only its shape (the canvas S, one
  entry per sentence);
- every other key as :func:`~rsrefseg.data.datamodule.collate_referring` makes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from rsrefseg.data.datamodule import RefSegDataModule, collate_referring
from rsrefseg.data.feature_cache import FeatureCache, FeatureCacheError

#: item keys this dataset adds (removed again by the collate)
SPLIT_KEY, ROW_KEY = "feature_split", "feature_row"


class CachedFeatureDataset(Dataset):
    """One split of the underlying data, each item pointing at its image's row in the cache.

    Args:
        dataset: the split as the cache's data config builds it.
        cache: the feature cache.
        split: the split's name in the cache.

    Raises:
        FeatureCacheError: the split's samples are not those the cache was written for.
    """

    def __init__(self, dataset: Dataset, cache: FeatureCache, split: str) -> None:
        self.dataset, self.cache, self.split = dataset, cache, split
        entry = cache.split(split)
        self.rows: list[int] = entry["rows"]
        self.sample_ids: list[str] | None = entry["sample_ids"]
        size = len(dataset)  # type: ignore[arg-type]
        if size != len(self.rows):
            raise FeatureCacheError(
                f"the '{split}' split has {size} samples but the feature cache {cache.cache_dir} was "
                f"written for {len(self.rows)}: the data changed; rewrite the cache (rsrefseg-features … "
                "force=true)"
            )
        keys_of = getattr(dataset, "image_keys", None)
        keys = keys_of() if keys_of is not None else None
        if keys is not None:
            cached = entry["image_keys"]
            moved = next((i for i, k in enumerate(keys) if str(k) != cached[self.rows[i]]), None)
            if moved is not None:
                raise FeatureCacheError(
                    f"the '{split}' split's sample {moved} shows image {keys[moved]!s} but the feature cache "
                    f"{cache.cache_dir} has {cached[self.rows[moved]]} there: the data changed; rewrite the "
                    "cache (rsrefseg-features … force=true)"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"CachedFeatureDataset({self.dataset!r}, {self.cache.cache_dir})"

    def image_keys(self) -> list[int]:
        """Each sample's row in the cache: equal rows, one image."""
        return list(self.rows)

    def describe(self) -> dict[str, Any]:
        """The underlying split's statistics, if it describes itself, and the cached image count."""
        own = self.dataset.describe() if hasattr(self.dataset, "describe") else {}
        return {**own, "cached_images": self.cache.split(self.split)["images"]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The underlying item without ``image``, plus ``feature_split`` and ``feature_row``.

        Raises:
            FeatureCacheError: the item's sample id is not the one the cache recorded at ``index``.
        """
        item = dict(self.dataset[index])
        del item["image"]
        if self.sample_ids is not None and str(item.get("sample_id")) != self.sample_ids[index]:
            raise FeatureCacheError(
                f"'{self.split}' sample {index} is {item.get('sample_id')!r} but the feature cache "
                f"{self.cache.cache_dir} recorded {self.sample_ids[index]!r}: the data changed; rewrite the "
                "cache (rsrefseg-features … force=true)"
            )
        item[SPLIT_KEY], item[ROW_KEY] = self.split, self.rows[index]
        return item


class CachedFeatureCollate:
    """Collate cached-feature items: each distinct image's encodings read once (see the module docstring).

    Args:
        cache: the feature cache the items point into.
    """

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        splits = {s[SPLIT_KEY] for s in samples}
        if len(splits) != 1:
            raise ValueError(f"a batch mixes cached splits {sorted(splits)}")
        rows = [int(s[ROW_KEY]) for s in samples]
        distinct = sorted(set(rows))
        position = {row: i for i, row in enumerate(distinct)}
        batch = collate_referring(
            [{k: v for k, v in s.items() if k not in (SPLIT_KEY, ROW_KEY)} for s in samples]
        )
        batch["image_encoding"] = self.cache.read(splits.pop(), distinct)
        batch["image_index"] = torch.tensor([position[row] for row in rows], dtype=torch.long)
        canvas = samples[0]["mask"].shape[-1]
        batch["image"] = torch.empty(len(samples), 0, canvas, canvas)
        return batch


class CachedFeatureDataModule(RefSegDataModule):
    """Train / val / test loaders over a feature cache; the data itself comes from the cache's manifest.

    Before fitting (:meth:`setup` with a trainer), the cache is checked against the module's network
    (:meth:`FeatureCache.check_network`): frozen mode, the same model fingerprint, the same encoder
    weights.

    Args:
        cache_dir: the folder ``rsrefseg-features`` wrote.
        batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            shuffle_sentences_seed: as :class:`RefSegDataModule`.

    Raises:
        FeatureCacheError: no cache at ``cache_dir``.
    """

    def __init__(
        self,
        *,
        cache_dir: str,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        shuffle_sentences_seed: int = 0,
    ) -> None:
        self.cache = FeatureCache(os.path.expanduser(str(cache_dir)))
        data = self.cache.manifest["data"]
        splits = {
            split: partial(self._cached_split, split, instantiate(data["splits"][split]))
            for split in self.cache.splits
        }
        super().__init__(
            splits=splits,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            group_names=data.get("group_names") or (),
            group_key=data.get("group_key"),
            shuffle_sentences_seed=shuffle_sentences_seed,
        )
        self.collate = CachedFeatureCollate(self.cache)

    def _cached_split(self, split: str, factory: Callable[[], Dataset]) -> CachedFeatureDataset:
        return CachedFeatureDataset(factory(), self.cache, split)

    def setup(self, stage: str | None = None) -> None:
        """Check the cache against the trainer's module (when there is one), then build the splits."""
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if module is not None:
            run_config = getattr(module, "run_config", None) or {}
            self.cache.check_network(module.net, run_config.get("model"))
        super().setup(stage)

    def _loader(self, dataset: Dataset, *, train: bool, sampler: Any = None) -> DataLoader:
        # the base class decides sampling and workers; only the collate differs
        loader = super()._loader(dataset, train=train, sampler=sampler)
        batching: dict[str, Any] = (
            {"batch_sampler": loader.batch_sampler}
            if loader.batch_size is None
            else {"batch_size": loader.batch_size, "sampler": loader.sampler, "drop_last": loader.drop_last}
        )
        return DataLoader(
            loader.dataset,
            **batching,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            persistent_workers=loader.persistent_workers,
            collate_fn=self.collate,
        )
