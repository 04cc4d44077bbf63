"""Score a checkpoint on one split (``rsrefseg-eval``): the metrics table as Markdown and JSON.

The network is rebuilt from the configuration stored in the checkpoint and loaded strictly; the
data is the checkpoint's own unless the command line composes another (``data=<name>``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from rsrefseg.config.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_trainer,
)
from rsrefseg.evaluation.passes import evaluate_splits
from rsrefseg.evaluation.provenance import describe, eval_data_config, scored_on
from rsrefseg.evaluation.results import plain_lines, print_table, save_results, save_sample_scores
from rsrefseg.process import prepare_process
from rsrefseg.training.checkpoint_files import load_module, read_checkpoint
from rsrefseg.training.status import recorded_status
from rsrefseg.training.wandb_run import finish_runs, record_run, record_summary

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; returns the payload written to ``metrics_<split>.json``.

    The run folder's ``status.json`` says whether the evaluation is running, completed or failed.
    """
    prepare_process()
    loggers = build_loggers(cfg)  # logger=wandb: a W&B run with job_type eval
    failed = True
    try:
        with recorded_status(cfg.paths.output_dir, enabled=pl.utilities.rank_zero_only.rank == 0) as status:
            payload = _evaluate(cfg, loggers)
            status.update(checkpoint=payload["checkpoint"], split=cfg.split)
        failed = False
    finally:
        finish_runs(loggers, failed=failed)
    return payload


def _evaluate(cfg: DictConfig, loggers: list[Any]) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    run_config = checkpoint["rsrefseg_config"]
    data, data_source = eval_data_config(cfg.get("data"), run_config, source=str(cfg.ckpt_path))
    with open_dict(cfg):
        # a composed data config follows the network it feeds (data.image_size: ${model.sam.image_size})
        cfg.model = run_config["model"]
        cfg.data = data
    datamodule = build_datamodule(cfg.data)
    module = load_module(checkpoint, datamodule, metrics=cfg.metrics)
    split_set = datamodule.dataset(cfg.split)
    report = {cfg.split: split_set.describe()} if hasattr(split_set, "describe") else None
    record_run(
        loggers,
        config={**OmegaConf.to_container(cfg, resolve=True), "checkpoint_config": run_config},
        parameters=module.parameter_rows(),
        data=report,
    )
    trainer = build_trainer(cfg, callbacks=build_callbacks(cfg), loggers=loggers)
    columns = evaluate_splits(
        trainer,
        module,
        datamodule,
        split=cfg.split,
        ckpt_path=None,
        shuffled_sentences=cfg.shuffled_sentence_test,
        baselines=cfg.trivial_baselines,
    )
    record = scored_on(cfg.data, cfg.metrics, split=cfg.split, data_config=data_source)
    payload = {"checkpoint": str(cfg.ckpt_path), "scored_on": record, "metrics": columns}
    record_summary(loggers, columns)
    if trainer.is_global_zero:
        title = f"{describe(record)} — {cfg.ckpt_path}"
        print_table(columns, title=title)
        print(plain_lines(cfg.split, columns[cfg.split]))
        save_sample_scores(cfg.paths.output_dir, module.sample_rows)
        path = save_results(cfg.paths.output_dir, payload, columns, stem=f"metrics_{cfg.split}", title=title)
        log.info("metrics written to %s", path)
    return payload
