"""The LightningModule: RSRefSeg 2 trained with the paper's losses, scored with the referring metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from rsrefseg.distributed import gather_objects
from rsrefseg.evaluation.baselines import BASELINES, update_baselines
from rsrefseg.evaluation.metrics import ReferringSegmentationMetrics, sample_scores
from rsrefseg.evaluation.scoring import Resolution, check_resolution, score_batch
from rsrefseg.models import RSRefSeg2, parameter_report
from rsrefseg.models.rsrefseg2 import RSRefSeg2Output
from rsrefseg.training.checkpointing import (
    FULL,
    TRAINABLE,
    check_checkpoint_state,
    model_config_differences,
    select_state,
)
from rsrefseg.training.losses import ReferringLoss
from rsrefseg.training.schedule import RunLength

# Metric values are summed over ranks inside the Metric before they are logged; Lightning's advice
# to add sync_dist would average already-global numbers.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")

OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: ``(optimizer, run=RunLength) → LRScheduler``, e.g. a partial of ``build_warmup_constant_cosine``
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def fit_length(trainer: pl.Trainer) -> RunLength:
    """The fit's length in optimizer steps, and its epoch length where epochs bound the run.

    Raises:
        ValueError: nothing bounds the run (``trainer.max_epochs`` and ``trainer.max_steps`` are -1).
    """
    total = trainer.estimated_stepping_batches
    if math.isinf(total):
        raise ValueError(
            "the learning-rate schedule is laid out over the run's length, and nothing bounds this run: "
            f"trainer.max_epochs={trainer.max_epochs} and trainer.max_steps={trainer.max_steps}. "
            "Set one of them (the paper's recipes set trainer.max_epochs=${recipe.epochs}, "
            "the default run trainer.max_steps=1000)."
        )
    steps_per_epoch = None
    if trainer.max_epochs not in (None, -1):
        # estimating the steps counted the epoch's batches; with max_epochs=-1 it does not set the
        # train data up, and neither does this (a step-bounded run starts its data as before)
        batches = trainer.num_training_batches
        if not math.isinf(batches):
            steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    return RunLength(total_steps=int(total), steps_per_epoch=steps_per_epoch)


class RefSegModule(pl.LightningModule):
    """Train / validate / test RSRefSeg 2.

    Args:
        net: the network.
        loss: the weighted training objective.
        optimizer: factory ``params → Optimizer`` (Hydra ``_partial_: true``).
        scheduler: factory ``optimizer → LRScheduler`` stepped every optimizer step, or None.
        group_names: per-sample groups scored separately (``val/gIoU/<group>``).
        group_key: batch key holding each sample's group name.
        inclusive_pr: Pr@X counts IoU ≥ X (LAVT / RMSIN) instead of > X (the release).
        threshold: probability above which a pixel is foreground.
        resolution: score at the ``original`` image size (default) or the network's ``input`` size
            (see :mod:`rsrefseg.evaluation.scoring`).
        run_config: the resolved run configuration, stored in every checkpoint so evaluation
            can rebuild the exact network.
        checkpoint_weights: ``trainable`` (default) saves the trainable parameters, buffers and
            frozen weights without a pretrained source; ``full`` saves every weight.
    """

    def __init__(
        self,
        *,
        net: RSRefSeg2,
        loss: ReferringLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        group_names: Sequence[str] = (),
        group_key: str | None = None,
        inclusive_pr: bool = False,
        threshold: float = 0.5,
        resolution: Resolution = "original",
        run_config: Mapping[str, Any] | None = None,
        checkpoint_weights: str = TRAINABLE,
    ) -> None:
        super().__init__()
        if checkpoint_weights not in (TRAINABLE, FULL):
            raise ValueError(
                f"checkpoint_weights must be {TRAINABLE!r} or {FULL!r}, got {checkpoint_weights!r}"
            )
        self.checkpoint_weights = checkpoint_weights
        # frozen pretrained weights are not in our checkpoints; on_load_checkpoint checks keys exactly
        self.strict_loading = False
        self.net, self.loss = net, loss
        if not net.prompter.emits_queries and loss.contrastive is not None:
            # the contrastive term never runs without Stage-0 queries; an unused trainable weight
            # would make DDP fail (no unused-parameter search)
            loss.contrastive.requires_grad_(False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.group_key, self.threshold = group_key, threshold
        check_resolution(resolution)
        self.resolution = resolution
        self.run_config = dict(run_config or {})
        metric_args = dict(inclusive=inclusive_pr, group_names=tuple(group_names))
        self.val_metrics = ReferringSegmentationMetrics(**metric_args)
        self.test_metrics = ReferringSegmentationMetrics(**metric_args)
        self.baseline_metrics = nn.ModuleDict(
            {name: ReferringSegmentationMetrics(**metric_args) for name in BASELINES}
        )
        #: prefix of logged test metrics (``test/gIoU``); other evaluation passes set their own
        self.test_prefix = "test"
        #: also score the trivial baselines in the next test pass (logged as ``<baseline>/gIoU``)
        self.score_baselines = False
        #: per-sample rows of each finished test pass, all ranks gathered, by prefix (see :meth:`test_step`)
        self.sample_rows: dict[str, list[dict[str, Any]]] = {}
        self._pass_rows: list[dict[str, Any]] = []

    def parameter_rows(self) -> list[tuple[str, int, int]]:
        """(component, trainable, total) per network component, the loss's own weights and the total."""
        return parameter_report({**self.net.components(), "loss": self.loss.parameters()}, self)

    def forward(self, images: Tensor, sentences: Sequence[str]) -> Tensor:
        """B×3×H×W images in [0, 1] and B sentences → B×1×h×w mask logits."""
        return self.net(images, sentences).logits

    def network_output(self, batch: Mapping[str, Any]) -> RSRefSeg2Output:
        """The network on a batch: B sentences, each about one of the batch's images.

        A batch holds ``image`` (N×3×S×S) and ``sentence`` (B). Optional keys:
        ``image_index`` (B long: the image each sentence is about; absent = sentence i is about
        image i), and ``image_encoding`` (an :class:`~rsrefseg.models.rsrefseg2.ImageEncoding` of
        the N images computed beforehand, e.g. cached frozen features: the encoders are skipped).
        """
        index = batch.get("image_index")
        encoding = batch.get("image_encoding")
        if encoding is not None:
            return self.net.decode(encoding, batch["sentence"], index)
        return self.net(batch["image"], batch["sentence"], index)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        out = self.network_output(batch)
        terms = self.loss.for_output(out, batch["mask"], batch.get("valid"))
        bs = len(batch["sentence"])  # images may be fewer: shared by an image's sentences
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=bs)
        return terms["loss"]

    def _score(self, batch: Mapping[str, Any], metrics: ReferringSegmentationMetrics) -> dict[str, Any]:
        logits = self.network_output(batch).logits
        preds, targets = score_batch(logits, batch, resolution=self.resolution, threshold=self.threshold)
        groups = batch[self.group_key] if self.group_key else None
        scores = sample_scores(preds, targets)
        metrics.update(preds, targets, groups, scores=scores)
        if metrics is self.test_metrics and self.score_baselines:
            update_baselines(self.baseline_metrics, targets, groups)
        return {"preds": preds, "targets": targets, "groups": groups, "scores": scores}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self._pass_rows = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Score a test batch; returns what callbacks may read in ``on_test_batch_end``.

        Returns:
            ``sample_id`` (B str), ``group`` (B str, or None without groups), ``iou`` (B float64 in
            [0, 1]), ``intersection`` / ``union`` / ``pred_size`` / ``target_size`` (B int64 pixel
            counts; :func:`~rsrefseg.evaluation.metrics.sample_scores`), ``preds`` / ``targets``
            (B bool masks h×w at the scoring resolution, see :mod:`rsrefseg.evaluation.scoring`).
        """
        scored = self._score(batch, self.test_metrics)
        scores = scored["scores"]
        if "sample_id" not in batch:
            raise KeyError(
                "test batches need a 'sample_id' per item (per-sample scores are keyed by it); "
                f"this batch has only {sorted(batch)}"
            )
        ids = [str(i) for i in batch["sample_id"]]
        groups = scored["groups"]
        for i, sample_id in enumerate(ids):
            self._pass_rows.append(
                {
                    "sample_id": sample_id,
                    "group": "" if groups is None else str(groups[i]),
                    "iou": float(scores["iou"][i]),
                    "intersection": int(scores["intersection"][i]),
                    "union": int(scores["union"][i]),
                }
            )
        return {
            "sample_id": ids,
            "group": None if groups is None else list(groups),
            **scores,
            "preds": scored["preds"],
            "targets": scored["targets"],
        }

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, self.test_prefix)
        if self.score_baselines:
            for name, metrics in self.baseline_metrics.items():
                self._log_metrics(metrics, name)
        self.sample_rows[self.test_prefix] = sorted(
            gather_objects(self._pass_rows), key=lambda r: r["sample_id"]
        )
        self._pass_rows = []

    def _log_metrics(self, metrics: ReferringSegmentationMetrics, prefix: str) -> None:
        # compute() already sums the states over ranks, so the values are global: no sync_dist
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        if "gIoU" in values:
            self.log(f"{prefix}/gIoU", values.pop("gIoU"), prog_bar=True)
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()})

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, run=fit_length(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rsrefseg_config"] = self.run_config
        checkpoint["rsrefseg_weights"] = self.checkpoint_weights
        if self.checkpoint_weights == TRAINABLE:
            checkpoint["state_dict"] = select_state(self, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads non-strictly (strict_loading=False); the exact key check happens here.
        # A resume (ckpt_path=…) builds the network from this run's config, not the checkpoint's.
        source = (self._trainer.ckpt_path if self._trainer is not None else None) or "(being restored)"
        differences = model_config_differences(checkpoint.get("rsrefseg_config"), self.run_config)
        hint = (
            ". This run's config differs from the one stored in the checkpoint in: " + "; ".join(differences)
            if differences
            else ""
        )
        check_checkpoint_state(
            self,
            checkpoint["state_dict"],
            weights=checkpoint.get("rsrefseg_weights", FULL),
            source=source,
            network="this run's network",
            hint=hint,
        )

    def load_checkpoint_state(self, checkpoint: Mapping[str, Any], *, source: str | Path) -> None:
        """Load a checkpoint's weights strictly: exactly the keys its ``rsrefseg_weights`` kind implies."""
        state = checkpoint["state_dict"]
        check_checkpoint_state(self, state, weights=checkpoint.get("rsrefseg_weights", FULL), source=source)
        self.load_state_dict(state, strict=False)
