"""What a W&B run shows beyond scalars: a fixed validation panel and a per-sample test table.

- Every validation (not the sanity check) logs ``val/panel``: the first ``val_samples`` samples of
  the validation split, the same ones every time, as images with the ground truth and the
  prediction as mask layers and the sentence as the caption, so a reader sees the masks evolve.
- Every test pass except the shuffled-sentence control logs ``<prefix>/samples`` (``test/samples``;
  ``rsrefseg-eval``: ``<split>/samples``), a table with one row per sample: id, sentence, expression
  type / category, IoU, intersection, union, and the image with both masks. Sorting by IoU lists
  the failures. Under DDP every rank renders its shard and rank 0 logs the gathered rows.

Images are shown at the network's input size (the padding cut off), scaled down to at most
``image_size`` pixels a side; the test masks, scored at the scoring resolution, are resized to it.
The callback does nothing without a :class:`~pytorch_lightning.loggers.WandbLogger`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from rsrefseg.distributed import gather_objects
from rsrefseg.evaluation.metrics import sample_scores
from rsrefseg.evaluation.scoring import predict_masks

log = logging.getLogger(__name__)

#: mask values of both layers; W&B colours each class and toggles each layer
CLASS_LABELS = {0: "background", 1: "target"}
#: test passes whose prefix ends so are controls, not the model's own results
CONTROL_SUFFIX = "_shuffled"


class WandbPanels(pl.Callback):
    """Log the validation panel and the per-sample test table to the trainer's W&B loggers.

    Args:
        val_samples: how many validation samples the panel shows (the first ones of the split).
        image_size: the longest side of a logged image, in pixels (smaller images are kept as they are).
        table_max_rows: rows of a test table at most (W&B's own limit is 10 000); a larger split
            keeps its lowest-IoU rows, the failures the table is for.
    """

    def __init__(self, *, val_samples: int = 8, image_size: int = 256, table_max_rows: int = 10_000) -> None:
        super().__init__()
        for name, value in (("val_samples", val_samples), ("image_size", image_size)):
            if value < 1:
                raise ValueError(f"callbacks.wandb_panels.{name} must be >= 1, got {value}")
        self.val_samples, self.image_size, self.table_max_rows = val_samples, image_size, table_max_rows
        self._panel_batch: dict[str, Any] | None = None
        self._rows: list[tuple[Any, ...]] = []

    # -- validation panel -------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or trainer.sanity_checking or not trainer.is_global_zero:
            return
        batch = self._fixed_batch(trainer)
        images = sentence_images(batch).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            logits = pl_module(images, batch["sentence"])
        pl_module.train(was_training)
        canvas = images.shape[-1]
        contents = [_content_size(batch, i, canvas) for i in range(images.shape[0])]
        preds = predict_masks(
            logits,
            canvas_size=canvas,
            content_sizes=contents,
            output_sizes=contents,
            threshold=float(getattr(pl_module, "threshold", 0.5)),
        )
        targets = [m[0, :h, :w] > 0.5 for m, (h, w) in zip(batch["mask"], contents, strict=True)]
        ious = sample_scores([p.cpu() for p in preds], targets)["iou"]
        shown = [
            _render(image, content, target, pred.cpu(), self.image_size)
            for image, content, target, pred in zip(images.cpu(), contents, targets, preds, strict=True)
        ]
        ids = batch.get("sample_id") or [str(i) for i in range(len(shown))]
        for lg in loggers:
            lg.log_image(
                key="val/panel",
                images=[image for image, _, _ in shown],
                caption=[
                    f"{sentence} [{sample_id}, IoU {float(iou):.2f}]"
                    for sentence, sample_id, iou in zip(batch["sentence"], ids, ious, strict=True)
                ],
                masks=[_mask_layers(target, pred) for _, target, pred in shown],
                step=trainer.global_step,
            )

    def _fixed_batch(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The first ``val_samples`` samples of the validation split, collated (built once)."""
        if self._panel_batch is None:
            loader = trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, list | tuple) else loader
            dataset = loader.dataset
            items = [dataset[i] for i in range(min(self.val_samples, len(dataset)))]
            self._panel_batch = loader.collate_fn(items)
        return self._panel_batch

    # -- per-sample test table --------------------------------------------------------------------

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not _wandb_loggers(trainer) or _is_control(pl_module):
            return
        if not isinstance(outputs, Mapping) or not {"sample_id", "iou", "preds", "targets"} <= set(outputs):
            raise TypeError(
                "the W&B test table needs test_step to return per-sample scores (sample_id, group, iou, "
                f"intersection, union, preds, targets); {type(pl_module).__name__}.test_step returned "
                f"{type(outputs).__name__}"
            )
        canvas = batch["image"].shape[-1]
        images = sentence_images(batch)
        groups = outputs.get("group") or [""] * len(outputs["sample_id"])
        for i, sample_id in enumerate(outputs["sample_id"]):
            image, target, pred = _render(
                images[i],
                _content_size(batch, i, canvas),
                outputs["targets"][i],
                outputs["preds"][i],
                self.image_size,
            )
            self._rows.append(
                (
                    str(sample_id),
                    str(batch["sentence"][i]),
                    str(groups[i]),
                    float(outputs["iou"][i]),
                    int(outputs["intersection"][i]) if "intersection" in outputs else None,
                    int(outputs["union"][i]) if "union" in outputs else None,
                    _png(image),
                    _png(target),
                    _png(pred),
                )
            )

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers or _is_control(pl_module):
            return
        rows = gather_objects(self._rows, to_all=False)  # images: rank 0 only
        self._rows = []
        if not trainer.is_global_zero:
            return
        rows.sort(key=lambda row: row[0])
        if len(rows) > self.table_max_rows:
            log.warning(
                "the W&B test table keeps the %d lowest-IoU of %d samples "
                "(callbacks.wandb_panels.table_max_rows)",
                self.table_max_rows,
                len(rows),
            )
            rows = sorted(rows, key=lambda row: row[3])[: self.table_max_rows]
        import wandb

        group_column = getattr(pl_module, "group_key", None) or "group"
        columns = ["sample_id", "sentence", group_column, "iou", "intersection", "union", "image"]
        table = wandb.Table(columns=columns)
        for sample_id, sentence, group, iou, inter, union, image, target, pred in rows:
            picture = wandb.Image(_unpng(image), masks=_mask_layers(_unpng(target), _unpng(pred)))
            table.add_data(sample_id, sentence, group, iou, inter, union, picture)
        prefix = getattr(pl_module, "test_prefix", "test")
        for lg in loggers:
            lg.log_metrics({f"{prefix}/samples": table}, step=trainer.global_step)  # type: ignore[dict-item]


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _is_control(pl_module: pl.LightningModule) -> bool:
    return str(getattr(pl_module, "test_prefix", "test")).endswith(CONTROL_SUFFIX)


def sentence_images(batch: Mapping[str, Any]) -> Tensor:
    """B×3×S×S, the image of each sentence (a batch may carry each image once with ``image_index``)."""
    index = batch.get("image_index")
    return batch["image"] if index is None else batch["image"][index.to(batch["image"].device)]


def _content_size(batch: Mapping[str, Any], index: int, canvas: int) -> tuple[int, int]:
    """The (h, w) of the image in the top-left of the input canvas (the rest is padding)."""
    sizes = batch.get("content_size")
    if sizes is None:
        return canvas, canvas
    return int(sizes[index][0]), int(sizes[index][1])


def _render(
    image: Tensor, content: Sequence[int], target: Tensor, pred: Tensor, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sample as W&B shows it: the content of the canvas and both masks at one display size.

    Args:
        image: 3×S×S input canvas in [0, 1].
        content: (h, w) of the image content in the canvas.
        target: boolean ground truth, any H×W covering the content (input or original size).
        pred: boolean prediction of the same size as ``target``.
        size: the longest side shown.

    Returns:
        uint8 image h'×w'×3, and uint8 masks h'×w' in {0, 1} (ground truth, prediction).
    """
    h, w = int(content[0]), int(content[1])
    scale = min(1.0, size / max(h, w))
    shown = (max(1, round(h * scale)), max(1, round(w * scale)))
    crop = image[:, :h, :w].detach().float().cpu()[None]
    if crop.shape[-2:] != shown:
        crop = F.interpolate(crop, size=shown, mode="bilinear", align_corners=False, antialias=True)
    pixels = (crop[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def layer(mask: Tensor) -> np.ndarray:
        mask = mask.detach().cpu().reshape(mask.shape[-2:]).float()[None, None]
        return F.interpolate(mask, size=shown, mode="nearest")[0, 0].to(torch.uint8).numpy()

    return pixels, layer(target), layer(pred)


def _mask_layers(target: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, Any]]:
    return {
        "ground_truth": {"mask_data": target, "class_labels": CLASS_LABELS},
        "prediction": {"mask_data": pred, "class_labels": CLASS_LABELS},
    }


def _png(pixels: np.ndarray) -> bytes:
    # rows wait for the end of the pass (and travel between ranks) compressed
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))
