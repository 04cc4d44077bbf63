"""`rsrefseg-eval`: a checkpoint → the metrics table of one split (Markdown and JSON in the run folder).

    rsrefseg-eval ckpt_path=logs/train/runs/<run>/checkpoints/best-step1000.ckpt split=test

The network is rebuilt from the configuration stored in the checkpoint and loaded strictly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from rsrefseg.build import CONFIG_DIR, build_datamodule, build_module, build_trainer, prepare_process
from rsrefseg.evaluate import evaluate_splits
from rsrefseg.module import RefSegModule
from rsrefseg.results import plain_lines, print_table, save_results

log = logging.getLogger(__name__)


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``rsrefseg-train`` / ``rsrefseg-export`` (with its run config)."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (set ckpt_path=<file written by rsrefseg-train>)"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not checkpoint.get("rsrefseg_config"):
        raise ValueError(f"{path} holds no 'rsrefseg_config': it was not written by rsrefseg-train")
    checkpoint["rsrefseg_source"] = str(path)
    return checkpoint


def load_module(
    checkpoint: str | Path | dict[str, Any], datamodule: Any = None, *, metrics: Any = None
) -> RefSegModule:
    """Rebuild the run's module from the config stored in a checkpoint and load its weights strictly.

    Args:
        checkpoint: a checkpoint file written by ``rsrefseg-train`` or ``rsrefseg-export``, or
            what :func:`read_checkpoint` returned for it.
        datamodule: supplies the groups scored separately (None: no groups).
        metrics: replaces the stored ``metrics`` config node (threshold, Pr@X convention, resolution).
    """
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    run_config = checkpoint["rsrefseg_config"]
    cfg = OmegaConf.create(run_config)
    if metrics is not None:
        cfg.metrics = metrics
    cfg.optimizer = None
    cfg.scheduler = None
    module = build_module(cfg, datamodule, run_config=run_config)
    module.load_checkpoint_state(checkpoint, source=checkpoint.get("rsrefseg_source", "checkpoint"))
    return module


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


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
