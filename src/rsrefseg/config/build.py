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
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import WandbLogger

from rsrefseg.config.resolvers import register_resolvers
from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.training.checkpoint_io import AtomicCheckpointIO
from rsrefseg.training.interruption import LastCheckpoint, take_over_signals
from rsrefseg.training.module import RefSegModule
from rsrefseg.training.progress import progress_bar
from rsrefseg.training.run_naming import earlier_run_id, run_identity

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
    """The ``logger`` nodes' loggers; a W&B run left unnamed is named after the job (:func:`run_identity`)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        if hydra.utils.get_class(node._target_) is WandbLogger:
            node = _with_run_identity(node, cfg)
        loggers.append(instantiate(node))
    return loggers


def _with_run_identity(node: DictConfig, cfg: DictConfig) -> DictConfig:
    """Complete a W&B node from the job: its name, group and tags, and the run it continues.

    A null ``name`` / ``group`` comes from :func:`run_identity`, the job's overrides are added to
    ``tags``, and without an ``id`` the job continues the W&B run an earlier attempt of it started in
    its run folder (a resume), so that one job stays one W&B run.
    """
    from hydra.core.hydra_config import HydraConfig

    identity = run_identity(
        HydraConfig.get() if HydraConfig.initialized() else None,
        fallback_name=Path(cfg.paths.output_dir).name,
        log_dir=OmegaConf.select(cfg, "paths.log_dir"),
    )
    node = node.copy()
    with open_dict(node):
        node.name = node.get("name") or identity.name
        node.group = node.get("group") or identity.group
        node.tags = list(dict.fromkeys([*(node.get("tags") or []), *identity.tags]))
        if not (node.get("id") or node.get("version")):
            node.id = earlier_run_id(node.get("save_dir") or node.get("dir") or ".")
    return node


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    wants_bar = cfg.trainer.get("enable_progress_bar", True) is not False
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        # Lightning's default would be a tqdm bar, even into a log file
        callbacks = [*callbacks, progress_bar()]
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # LastCheckpoint saves and requeues on SLURM's warning signal; Lightning must not requeue too
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    if any(isinstance(c, LastCheckpoint) for c in callbacks):
        take_over_signals(trainer)
    return trainer
