"""Training throughput: samples/s of full optimizer steps (forward, loss, backward, optimizer step).

The step is the one ``rsrefseg-train`` takes: ``RefSegModule.network_output`` on a batch, the
configured loss (``ReferringLoss.for_output``) under the path's autocast, backward, the configured
optimizer's step (``optimizer`` node, e.g. fused AdamW) over the trainable parameters of the
configured fine-tuning mode. A sample is one sentence with its mask; B samples with K sentences
per image hold B / K images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rsrefseg.bench.inference import example_images, example_sentences
from rsrefseg.bench.paths import PathSettings, autocast, call_layout, per_sample_decoding
from rsrefseg.training.module import RefSegModule


def training_batch(
    module: RefSegModule, samples: int, per_image: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """B / K random images and B random masks (B×1×S×S, at SAM's input size) on ``device``.

    Raises:
        ValueError: B is not a multiple of K.
    """
    if samples % per_image:
        raise ValueError(
            f"bench.training: batch size {samples} is not a multiple of {per_image} sentences per image"
        )
    images = example_images(module.net, samples // per_image, device, seed)
    size = images.shape[-1]
    generator = torch.Generator().manual_seed(seed + 1)
    masks = (torch.rand(samples, 1, size, size, generator=generator) > 0.5).float().to(device)
    return images, masks


def training_step_call(
    module: RefSegModule,
    optimizer: torch.optim.Optimizer | None,
    images: Tensor,
    masks: Tensor,
    per_image: int,
    path: PathSettings,
) -> Callable[[], Tensor]:
    """One training step of ``path``; returns the loss.

    Args:
        module: the LightningModule (network and loss), in train mode.
        optimizer: the optimizer over the trainable parameters; None = forward, loss and backward
            only (what the FLOP counter counts), gradients cleared after.
        images: B/K×3×S×S on the device.
        masks: B×1×S×S targets.
        per_image: K sentences per image.
        path: precision, shared encodings, per-sample decoding.
    """
    device = images.device
    sentences = example_sentences(masks.shape[0])
    images_, sentences_, index = call_layout(images, sentences, per_image, shared=path.share_image_encodings)
    batch = {"image": images_, "sentence": sentences_}
    if index is not None:
        batch["image_index"] = index
    dtype = path.autocast_dtype(device)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> Tensor:
        with autocast(device, dtype), per_sample_decoding(module.net, path.per_sample_decoding):
            loss = module.loss.for_output(module.network_output(batch), masks)["loss"]
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in params:
                p.grad = None
        return loss.detach()

    return step
