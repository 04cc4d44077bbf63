"""One training job (``rsrefseg-train``): fit, select on val, test once, save the metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from rich.console import Console
from rich.table import Table

from rsrefseg.config.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
)
from rsrefseg.evaluation.passes import evaluate_splits
from rsrefseg.evaluation.provenance import COMMAND_LINE, describe, job_overrides, scored_on
from rsrefseg.evaluation.results import plain_lines, print_table, save_results, save_sample_scores
from rsrefseg.io import atomic_write_text
from rsrefseg.process import prepare_process
from rsrefseg.training.interruption import LAST_CHECKPOINT, handling_signals
from rsrefseg.training.resume import (
    Resume,
    check_same_config,
    continue_csv_logs,
    logged_steps,
    resolve_resume,
    slurm_attempt,
)
from rsrefseg.training.status import recorded_status
from rsrefseg.training.wandb_run import finish_runs, record_run, record_summary

log = logging.getLogger(__name__)


def print_parameters(rows: list[tuple[str, int, int]], console: Console) -> None:
    table = Table(title="parameters")
    for column in ("component", "trainable", "total"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, trainable, total in rows:
        table.add_row(name, f"{trainable / 1e6:.3f} M", f"{total / 1e6:.3f} M")
    console.print(table)


def print_data_report(report: dict[str, dict[str, Any]], console: Console) -> None:
    """One column per split, one row per scalar statistic (nested ones flattened with '/')."""
    flat = {split: _flatten(values) for split, values in report.items()}
    table = Table(title="data")
    table.add_column("statistic")
    for split in flat:
        table.add_column(split, justify="right")
    rows = list(dict.fromkeys(k for values in flat.values() for k in values))
    for row in rows:
        table.add_row(row, *(_format(flat[split].get(row)) for split in flat))
    console.print(table)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _format(value: Any) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the results payload (also written to ``metrics.json``).

    The run folder's ``status.json`` says whether the job is running, completed, failed (with the
    error), was interrupted or preempted (:mod:`rsrefseg.training.status`). A job resumes the run
    of its folder from ``last.ckpt`` with ``ckpt_path=last``, or by itself when SLURM requeued it
    (:mod:`rsrefseg.training.resume`); it never writes into a folder holding a finished run.
    """
    prepare_process()
    output_dir = Path(cfg.paths.output_dir)
    is_rank_zero = pl.utilities.rank_zero_only.rank == 0
    resume = resolve_resume(cfg.get("ckpt_path"), output_dir, _last_checkpoint(cfg), rank_zero=is_rank_zero)
    start = {"restarts": resume.restarts, "resumed_from": resume.ckpt_path, "attempt": slurm_attempt()}
    with recorded_status(output_dir, enabled=is_rank_zero, start=start) as status:
        payload = _train(cfg, output_dir, is_rank_zero, resume)
        status.update(best_checkpoint=payload["best_checkpoint"], global_step=payload["global_step"])
    return payload


def _last_checkpoint(cfg: DictConfig) -> Path:
    """Where the run keeps its resumable checkpoint (``callbacks.last_checkpoint.dirpath``)."""
    node = (cfg.get("callbacks") or {}).get("last_checkpoint")
    dirpath = node.get("dirpath") if node else None
    return Path(dirpath or Path(cfg.paths.output_dir) / "checkpoints") / LAST_CHECKPOINT


def _train(cfg: DictConfig, output_dir: Path, is_rank_zero: bool, resume: Resume) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if resume.in_place:
        check_same_config(output_dir, run_config)
    if is_rank_zero:
        atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(run_config))

    datamodule = build_datamodule(cfg.data)
    if cfg.select_on not in ("val", "test"):
        raise ValueError(f"select_on must be 'val' or 'test', got {cfg.select_on!r}")
    if cfg.select_on == "test":
        log.warning("select_on=test: the checkpoint is chosen on the TEST split (the release's protocol)")
        datamodule.split_factories["val"] = datamodule.split_factories["test"]
    module = build_module(cfg, datamodule, run_config=run_config)
    console = Console()
    data_report = datamodule.describe()
    if is_rank_zero:
        print_parameters(module.parameter_rows(), console)
        if data_report:
            print_data_report(data_report, console)

    callbacks, loggers = build_callbacks(cfg), build_loggers(cfg)
    if resume.in_place and resume.ckpt_path and is_rank_zero:
        continue_csv_logs(loggers, logged_steps(resume.ckpt_path))
    # SIGTERM / SIGINT / the scheduler's warning signal: save last.ckpt at a batch boundary and stop
    signals = handling_signals(callbacks)
    failed = True  # until the job returns: its W&B run is then finished as failed
    try:
        record_run(loggers, config=run_config, parameters=module.parameter_rows(), data=data_report)
        trainer = build_trainer(cfg, callbacks, loggers)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.ckpt_path)
        # the monitored checkpoint callback selects; another one may only keep last.ckpt
        checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        best_score = checkpoint.best_model_score if checkpoint is not None else None
        payload: dict[str, Any] = {
            "output_dir": str(output_dir),
            "best_checkpoint": best_path or None,
            f"selection/{cfg.select_on}_gIoU": float(best_score) if best_score is not None else None,
            "global_step": trainer.global_step,
            "seed": int(cfg.seed),
            "overrides": job_overrides(),
            "data": data_report,
            "scored_on": scored_on(cfg.data, cfg.metrics, split="test", data_config=COMMAND_LINE),
        }
        title = f"{describe(payload['scored_on'])} — selected on {cfg.select_on}"
        if cfg.test_after_fit:
            if not best_path:
                log.warning(
                    "no checkpoint was selected (fast_dev_run or no validation): testing the final weights"
                )
            columns = evaluate_splits(
                trainer,
                module,
                datamodule,
                split="test",
                ckpt_path=best_path or None,
                shuffled_sentences=cfg.shuffled_sentence_test,
                baselines=cfg.trivial_baselines,
            )
            payload["metrics"] = columns
            record_summary(loggers, columns)
            if trainer.is_global_zero:
                print_table(columns, title=title, console=console)
                print(plain_lines("test", columns["test"]))
        if trainer.is_global_zero:
            save_sample_scores(output_dir, module.sample_rows)
            path = save_results(output_dir, payload, payload.get("metrics", {}), title=title)
            log.info("metrics written to %s", path)
        failed = False
        return payload
    finally:
        signals.close()
        finish_runs(loggers, failed=failed)
