"""Strict loading of backbone weights, and the record of which modules hold pretrained weights."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn


def read_sam_checkpoint(checkpoint: str | Path, *, model: str) -> tuple[Path, object]:
    """Read one of Meta's SAM / SAM 2 weight files (``model.sam.sam.checkpoint``) onto the CPU.

    Args:
        checkpoint: the file path.
        model: what it is for, named in the error (``SAM``, ``SAM 2``).

    Returns:
        The resolved path and the loaded content (tensors only: ``weights_only=True``).

    Raises:
        FileNotFoundError: naming the path, the config key and the way to train without it.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{model} checkpoint not found: {path} (config key model.sam.sam.checkpoint). Download "
            "Meta's file for this size or set model.sam.sam.checkpoint=null for random weights."
        )
    return path, torch.load(path, map_location="cpu", weights_only=True)


def describe_key_mismatch(
    own: Mapping[str, Tensor], state: Mapping[str, Tensor], expected: Collection[str] | None = None
) -> str | None:
    """Why ``state`` does not fit a module whose state dict is ``own``, or None when it fits.

    Args:
        own: the module's state dict (for shapes).
        state: the state read from a file.
        expected: the keys ``state`` must have exactly (default: every key of ``own``).

    Returns:
        ``"<n> missing [...], <n> unexpected [...], <n> shape mismatches [...]"`` (10 keys each at most).
    """
    expected = set(own) if expected is None else set(expected)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(expected & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return None

    def head(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" … (+{len(items) - 10} more)" if len(items) > 10 else "")

    return (
        f"{len(missing)} missing [{head(missing)}], {len(unexpected)} unexpected [{head(unexpected)}], "
        f"{len(mismatched)} shape mismatches [{head(mismatched)}]"
    )


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], *, source: str | Path) -> None:
    """Load ``state`` into ``module`` exactly: same keys, same shapes, or a ValueError naming ``source``.

    Args:
        module: the freshly built module.
        state: the state dict read from ``source``.
        source: the file the state came from (for the message).
    """
    problem = describe_key_mismatch(module.state_dict(), state)
    if problem:
        raise ValueError(
            f"checkpoint {source} does not fit {type(module).__name__}: {problem}. "
            "Check that the config's size matches the file."
        )
    module.load_state_dict(state, strict=True)


#: attribute a builder sets on a module whose weights it loaded from a pretrained source
PRETRAINED_SOURCE_ATTR = "rsrefseg_pretrained_source"


def mark_pretrained(module: nn.Module, source: str | Path) -> None:
    """Record that ``module``'s weights came from ``source`` (a file, folder or published tag).

    Our checkpoints omit frozen weights under such a module: a fresh build reloads them from the
    same source. Frozen weights nobody can reload (random init) are always saved.
    """
    setattr(module, PRETRAINED_SOURCE_ATTR, str(source))


def pretrained_prefixes(root: nn.Module) -> dict[str, str]:
    """``{module name prefix ('' for root, else 'a.b.'): source}`` for every marked sub-module."""
    return {
        (f"{name}." if name else ""): getattr(module, PRETRAINED_SOURCE_ATTR)
        for name, module in root.named_modules()
        if getattr(module, PRETRAINED_SOURCE_ATTR, None)
    }
