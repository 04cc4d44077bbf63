"""Score a module on a split: the model, the model with deranged sentences, and the trivial baselines."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.evaluation.baselines import BASELINES
from rsrefseg.training.module import RefSegModule


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
    """
    columns: dict[str, dict[str, Any]] = {}
    floors: dict[str, dict[str, Any]] = {}
    passes = [(split, False)] + ([(f"{split}_shuffled", True)] if shuffled_sentences else [])
    for prefix, shuffled in passes:
        module.test_prefix = prefix
        module.score_baselines = baselines and not shuffled
        loader = datamodule.split_dataloader(split, shuffle_sentences=shuffled)
        trainer.test(module, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        # read back what was logged: with a spawning strategy the module that scored lives in another process
        columns[prefix] = _logged(trainer, prefix)
        floors.update({name: _logged(trainer, name) for name in BASELINES if module.score_baselines})
    module.test_prefix, module.score_baselines = "test", False
    return {**columns, **floors}


def _logged(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    """The metrics last logged under ``<prefix>/``, without the prefix."""
    return {
        key[len(prefix) + 1 :]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(f"{prefix}/")
    }
