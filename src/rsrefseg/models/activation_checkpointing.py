"""Recompute transformer blocks in backward instead of storing their activations (activation checkpointing).

A block whose forward is recomputed keeps only its input for backward; everything inside it
(attention maps, MLP hidden states) is computed again when its gradient is needed. Memory for
activations drops to about one block's worth plus the block inputs, for roughly one more forward
pass of compute. The gradients are the same up to floating-point reordering (none here: the
recomputation runs the same kernels on the same inputs).

open_clip's towers have their own switch (``set_grad_checkpointing``); this module serves the
backbones without one: segment-anything's ``ImageEncoderViT`` blocks and SAM 2's Hiera blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class RecomputedForward:
    """A block's own forward run under non-reentrant ``torch.utils.checkpoint`` when gradients are on.

    Installed as the block's instance ``forward``, so the block stays where it is: same module
    tree, parameter names and state-dict keys. Without gradients (evaluation) it is the plain forward.

    Args:
        block: the module whose class ``forward`` is recomputed.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.block).forward.__get__(self.block)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def recompute_in_backward(blocks: Iterable[nn.Module], enabled: bool = True) -> int:
    """Make each of ``blocks`` recompute its forward in backward (or undo that), in place.

    Returns:
        The number of blocks switched.
    """
    count = 0
    for block in blocks:
        if enabled:
            block.forward = RecomputedForward(block)
        else:
            block.__dict__.pop("forward", None)
        count += 1
    return count


def recomputes_in_backward(block: nn.Module) -> bool:
    """Whether ``block`` was switched by :func:`recompute_in_backward`."""
    return isinstance(block.__dict__.get("forward"), RecomputedForward)
