"""Score a module on a split: the model, the model with deranged sentences, and the trivial baselines."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from rsrefseg.baselines import trivial_baselines
from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.module import RefSegModule


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
    module's current weights.
    """
    columns: dict[str, dict[str, Any]] = {}
    passes = [(split, False)] + ([(f"{split}_shuffled", True)] if shuffled_sentences else [])
    for prefix, shuffled in passes:
        module.test_prefix = prefix
        loader = datamodule.split_dataloader(split, shuffle_sentences=shuffled)
        trainer.test(module, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        # read back what was logged: with a spawning strategy the module that scored lives in another process
        columns[prefix] = {
            key[len(prefix) + 1 :]: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(f"{prefix}/")
        }
    module.test_prefix = "test"
    if baselines:
        dataset = datamodule.dataset(split)
        columns.update(
            trivial_baselines(
                (dataset[i] for i in range(len(dataset))),  # type: ignore[arg-type]
                group_names=datamodule.group_names,
                group_key=datamodule.group_key,
                inclusive_pr=module.test_metrics.inclusive,
                resolution=module.resolution,
            )
        )
    return columns
