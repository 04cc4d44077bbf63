"""Score a module on a split: the model, the model with deranged sentences, and the trivial baselines."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.errors import ConfigError
from rsrefseg.evaluation.baselines import BASELINES
from rsrefseg.training.module import RefSegModule


class SplitPass(pl.LightningDataModule):
    """One evaluation pass's loader, built when Lightning asks for it in each process.

    Under DDP that is after the process group exists (in a re-launched or spawned rank too), so
    :meth:`RefSegDataModule.split_dataloader` shards the split without repeats, with or without a
    fit before. A loader built earlier would get Lightning's ``DistributedSampler`` instead, which
    pads the ranks to equal length by scoring some samples twice.
    """

    def __init__(self, datamodule: RefSegDataModule, split: str, *, shuffled: bool) -> None:
        super().__init__()
        self.datamodule, self.split, self.shuffled = datamodule, split, shuffled

    def test_dataloader(self) -> DataLoader:
        return self.datamodule.split_dataloader(self.split, shuffle_sentences=self.shuffled)


def evaluate_splits(
    trainer: pl.Trainer,
    module: RefSegModule,
    datamodule: RefSegDataModule,
    *,
    split: str,
    ckpt_path: str | None,
    shuffled_sentences: bool,
    baselines: bool,
) -> dict[str, dict[str, Any]]:
    """Return columns ``{split: metrics, f"{split}_shuffled": …, "all_background": …, "whole_image": …}``.

    ``ckpt_path`` (a Lightning checkpoint) is loaded into ``module`` before scoring; None scores the
    module's current weights. The baselines are scored in the first pass, on the same targets.

    Raises:
        ConfigError: the module scores at the original size but the split's items carry no
            original-size masks.
    """
    check_original_masks(datamodule, split, module.resolution)
    columns: dict[str, dict[str, Any]] = {}
    floors: dict[str, dict[str, Any]] = {}
    module.sample_rows = {}
    passes = [(split, False)] + ([(f"{split}_shuffled", True)] if shuffled_sentences else [])
    for prefix, shuffled in passes:
        module.test_prefix = prefix
        module.score_baselines = baselines and not shuffled
        loader = SplitPass(datamodule, split, shuffled=shuffled)
        trainer.test(module, datamodule=loader, ckpt_path=ckpt_path, verbose=False)
        # read back what was logged: with a spawning strategy the module that scored lives in another process
        columns[prefix] = _logged(trainer, prefix)
        floors.update({name: _logged(trainer, name) for name in BASELINES if module.score_baselines})
    module.test_prefix, module.score_baselines = "test", False
    return {**columns, **floors}


def check_original_masks(datamodule: RefSegDataModule, split: str, resolution: str) -> None:
    """Refuse to score at the original size a split whose items carry no original-size ground truth.

    Scoring would otherwise have nothing at the original size to compare with (docs/metrics.md).
    """
    if resolution != "original":
        return
    dataset = datamodule.dataset(split)
    if "original_mask" not in dataset[0]:  # type: ignore[index]
        raise ConfigError(
            f"metrics.resolution=original, but the '{split}' split's items carry no 'original_mask' "
            f"({dataset!r}; e.g. a split built with keep_original_mask=false): score it with "
            "metrics.resolution=input, or keep its original masks"
        )


def _logged(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    """The metrics last logged under ``<prefix>/``, without the prefix."""
    return {
        key[len(prefix) + 1 :]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(f"{prefix}/")
    }
