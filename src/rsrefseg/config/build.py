"""Turn a composed Hydra config into the run's objects: datamodule, module, callbacks, loggers, trainer."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar

from rsrefseg.config.resolvers import register_resolvers
from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.io import AtomicCheckpointIO
from rsrefseg.training.module import RefSegModule
from rsrefseg.training.progress import progress_bar

log = logging.getLogger(__name__)

#: conf/ beside src/ in a source checkout; RSREFSEG_CONFIG_DIR points elsewhere.
CONFIG_DIR = os.environ.get("RSREFSEG_CONFIG_DIR") or str(Path(__file__).resolve().parents[3] / "conf")
# the config tree states lengths relative to the run (${times:…}, ${interval:…})
register_resolvers()


def build_datamodule(data_cfg: DictConfig) -> RefSegDataModule:
    """Instantiate the datamodule from the ``data`` node.

    The node also holds values its parts interpolate (``image_size``, ``generator``, ``sizes``, …);
    only keys the datamodule's class accepts are passed to it.
    """
    resolved = OmegaConf.to_container(data_cfg, resolve=True)
    target = hydra.utils.get_class(resolved["_target_"])
    accepted = set(inspect.signature(target.__init__).parameters)
    return instantiate({k: v for k, v in resolved.items() if k == "_target_" or k in accepted})


def build_module(
    cfg: DictConfig | Mapping[str, Any],
    datamodule: RefSegDataModule | None,
    *,
    run_config: Mapping[str, Any] | None = None,
) -> RefSegModule:
    """The run's LightningModule (network, loss, optimizer, schedule) from the config nodes.

    ``datamodule`` supplies the per-sample groups scored separately; None scores no groups.
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    net = instantiate(cfg.model, _convert_="partial")
    loss = instantiate(cfg.loss)
    optimizer = instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    metrics = cfg.get("metrics") or {}
    return RefSegModule(
        net=net,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        group_names=datamodule.group_names if datamodule is not None else (),
        group_key=datamodule.group_key if datamodule is not None else None,
        inclusive_pr=bool(metrics.get("inclusive_pr", False)),
        threshold=float(metrics.get("threshold", 0.5)),
        resolution=str(metrics.get("resolution", "original")),
        run_config=run_config,
        checkpoint_weights=str(cfg.get("checkpoint_weights") or "trainable"),
    )


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    wants_bar = cfg.trainer.get("enable_progress_bar", True) is not False
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        # Lightning's default would be a tqdm bar, even into a log file
        callbacks = [*callbacks, progress_bar()]
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )


def finish_loggers(loggers: list[Any]) -> None:
    """Close W&B runs: Lightning does not call ``wandb.finish()``, and a sweep must not inherit a run."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()
