"""Score a checkpoint on one split (``rsrefseg-eval``): the metrics table as Markdown and JSON.

The network is rebuilt from the configuration stored in the checkpoint and loaded strictly.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from rsrefseg.build import build_datamodule, build_trainer, prepare_process
from rsrefseg.evaluation.passes import evaluate_splits
from rsrefseg.evaluation.results import plain_lines, print_table, save_results
from rsrefseg.training.checkpoint_files import load_module, read_checkpoint

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    prepare_process()
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    # the data config follows the network it feeds (data.image_size: ${model.sam.image_size})
    with open_dict(cfg):
        cfg.model = checkpoint["rsrefseg_config"]["model"]
    datamodule = build_datamodule(cfg.data)
    module = load_module(checkpoint, datamodule, metrics=cfg.metrics)
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    columns = evaluate_splits(
        trainer,
        module,
        datamodule,
        split=cfg.split,
        ckpt_path=None,
        shuffled_sentences=cfg.shuffled_sentence_test,
        baselines=cfg.trivial_baselines,
    )
    payload = {"checkpoint": str(cfg.ckpt_path), "split": cfg.split, "metrics": columns}
    if trainer.is_global_zero:
        title = f"{cfg.split} split — {cfg.ckpt_path}, scored at the {cfg.metrics.resolution} size"
        print_table(columns, title=title)
        print(plain_lines(cfg.split, columns[cfg.split]))
        path = save_results(cfg.paths.output_dir, payload, columns, stem=f"metrics_{cfg.split}", title=title)
        log.info("metrics written to %s", path)
    return payload
