"""The data loader alone: samples/s of the training loader with the configured workers.

The dataset is on disk in a real format: a composition whose data is on disk (``data=rrsisd``,
``data=jsonl``, …) is read as configured; the on-the-fly synthetic benchmark is first written as
the unified JSONL + PNG layout (its own generator, into a temporary folder) and read back through
``data=jsonl``, so decoding, resizing and collation are what an on-disk run pays. A call fetches
a few batches and moves their tensors to the device (non-blocking when pinned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from rsrefseg.bench.composition import compose_config
from rsrefseg.config.build import build_datamodule
from rsrefseg.data.datamodule import RefSegDataModule
from rsrefseg.data.synthetic import export_unified_jsonl


def on_disk_data(
    cfg: DictConfig, work_dir: Path, *, samples: int, image_size: int | None
) -> tuple[dict[str, Any], str]:
    """The ``data`` node to read from disk (resolved), and a description of the dataset.

    Args:
        cfg: the composition.
        work_dir: where an export of the synthetic benchmark goes.
        samples: training samples to export.
        image_size: side of the exported images; None = the generator's configured size.
    """
    generator_node = cfg.data.get("generator")
    if generator_node is None:
        return OmegaConf.to_container(
            cfg.data, resolve=True
        ), f"{cfg.data.get('name', 'data')} (as configured)"
    node = OmegaConf.to_container(generator_node, resolve=True)
    if image_size is not None:
        node["image_size"] = int(image_size)
    export_unified_jsonl(instantiate(node), split_sizes={"train": samples}, out_dir=work_dir)
    # the model's input size, as training on this export would resize to it
    size = int(OmegaConf.select(cfg, "model.sam.image_size", default=cfg.data.image_size))
    composed = compose_config("train", ["data=jsonl", f"data.root={work_dir}", f"data.image_size={size}"])
    side = node["image_size"]
    data = OmegaConf.to_container(composed.data, resolve=True)
    return data, f"synthetic export, {samples} samples of {side}×{side} PNG, read by data=jsonl"


def train_loader(data_cfg: DictConfig, batch_size: int) -> tuple[RefSegDataModule, DataLoader]:
    """The training loader of ``data_cfg`` at ``batch_size`` (its workers, pinning and persistence)."""
    datamodule = build_datamodule(data_cfg)
    datamodule.batch_size = batch_size
    # the train split only: an export holds no val / test files
    return datamodule, datamodule.train_dataloader()


def loader_call(loader: DataLoader, batches: int, device: torch.device) -> Callable[[], int]:
    """Fetch ``batches`` batches (a new epoch when one ends) and move them to ``device``; returns samples.

    The iterator lives across calls, so workers start once (in the warm-up) unless they are not
    persistent and an epoch ends.
    """
    state: dict[str, Iterator[Any]] = {}
    non_blocking = bool(loader.pin_memory) and device.type == "cuda"

    def next_batch() -> dict[str, Any]:
        if "it" not in state:
            state["it"] = iter(loader)
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    def call() -> int:
        samples = 0
        for _ in range(batches):
            batch = next_batch()
            for key in ("image", "mask"):
                batch[key].to(device, non_blocking=non_blocking)
            samples += len(batch["sentence"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return samples

    return call
