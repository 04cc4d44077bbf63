"""Inference throughput: images/s and sentences/s at a batch of N images with K sentences each.

End to end from tensors already on the device: the images are N×3×S×S in [0, 1] at SAM's input
size, the sentences are tokenised inside the call (as in evaluation), and the call ends with the
mask logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rsrefseg.bench.paths import PathSettings, autocast, call_layout, per_sample_decoding
from rsrefseg.models.cost import SENTENCE
from rsrefseg.models.rsrefseg2 import RSRefSeg2


def example_images(net: RSRefSeg2, count: int, device: torch.device, seed: int = 0) -> Tensor:
    """``count`` random images N×3×S×S in [0, 1] at SAM's input size S, on ``device``."""
    size = net.sam.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator).to(device)


def example_sentences(count: int) -> list[str]:
    """``count`` referring expressions of one length (the example sentence ``rsrefseg-report`` counts)."""
    return [SENTENCE] * count


def inference_call(
    net: RSRefSeg2,
    images: Tensor,
    per_image: int,
    path: PathSettings,
    *,
    grad: bool = False,
) -> Callable[[], Tensor]:
    """One inference call of ``path`` over N images with K = ``per_image`` sentences each.

    Args:
        net: the network (in eval mode).
        images: N×3×S×S on the device.
        per_image: K.
        path: how the network is called (precision, shared encodings, per-sample decoding).
        grad: run with autograd recording (the FLOP counter needs it); timing runs without.

    Returns:
        A function doing the call and returning the N·K×1×M×M mask logits.
    """
    device = images.device
    sentences = example_sentences(images.shape[0] * per_image)
    args = call_layout(images, sentences, per_image, shared=path.share_image_encodings)
    dtype = path.autocast_dtype(device)

    def call() -> Tensor:
        mode = torch.enable_grad() if grad else torch.inference_mode()
        with mode, autocast(device, dtype), per_sample_decoding(net, path.per_sample_decoding):
            return net(*args).logits

    return call
