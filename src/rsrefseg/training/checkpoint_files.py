"""Checkpoint files: read one, rebuild its module, and export it with LoRA merged (``rsrefseg-export``).

A merged export holds every weight of the network (adapters folded into their base weights, so
inference runs at the base model's cost) and a config that builds the same network without
adapters or pretrained files. ``rsrefseg-eval ckpt_path=model_merged.ckpt`` scores it.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rsrefseg.config.build import build_module
from rsrefseg.io import atomic_open
from rsrefseg.training.checkpointing import FULL, merge_lora, merged_run_config
from rsrefseg.training.module import RefSegModule

log = logging.getLogger(__name__)


#: what our checkpoint files hold at the top level
EXPECTED = (
    "a dict with 'state_dict' and 'rsrefseg_config' (a checkpoint written by rsrefseg-train or "
    "rsrefseg-export)"
)


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``rsrefseg-train`` / ``rsrefseg-export`` (with its run config).

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file is empty, truncated or not a torch file, or holds something else
            than our checkpoints (e.g. a plain state dict, or another project's Lightning file).
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (set ckpt_path=<file written by rsrefseg-train>)"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); expected {EXPECTED}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError) as error:
        raise ValueError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}): the file is truncated, "
            f"corrupt or not a torch file; expected {EXPECTED}"
        ) from error
    config = checkpoint.get("rsrefseg_config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not config:
        raise ValueError(
            f"{path} is not an rsrefseg checkpoint: it holds {_summary(checkpoint)}; expected {EXPECTED}"
        )
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} holds no 'state_dict'; expected {EXPECTED}")
    checkpoint["rsrefseg_config"] = _renamed_targets(checkpoint["rsrefseg_config"])
    checkpoint["rsrefseg_source"] = str(path)
    return checkpoint


#: modules that moved when the package was given its layout; older checkpoints name the old paths
MOVED_MODULES = {
    "rsrefseg.losses.": "rsrefseg.training.losses.",
    "rsrefseg.schedule.": "rsrefseg.training.schedule.",
}


def _summary(content: Any) -> str:
    """What a file holds instead of our checkpoint, for messages (a dict's first keys)."""
    if isinstance(content, dict):
        keys = list(content)
        more = f", … ({len(keys)} keys)" if len(keys) > 6 else ""
        return f"a dict with keys {', '.join(map(repr, keys[:6]))}{more}"
    return f"a {type(content).__name__}"


def _renamed_targets(node: Any) -> Any:
    """The stored run config with ``_target_`` paths of moved modules updated (older checkpoints)."""
    if isinstance(node, dict):
        return {key: _renamed_targets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_targets(value) for value in node]
    if isinstance(node, str):
        for old, new in MOVED_MODULES.items():
            if node.startswith(old):
                return new + node[len(old) :]
    return node


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


def export_merged(ckpt_path: str | Path, out_path: str | Path, *, force: bool = False) -> Path:
    """Write ``out_path``: the checkpoint's network with LoRA merged, every weight, and its config.

    Raises:
        FileExistsError: ``out_path`` exists and ``force`` is False.
    """
    out = Path(out_path).expanduser()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    source = Path(ckpt_path).expanduser()
    module = load_module(source)
    merged = merge_lora(module.net)
    payload = {
        "state_dict": module.state_dict(),
        "rsrefseg_config": merged_run_config(module.run_config),
        "rsrefseg_weights": FULL,
        "rsrefseg_merged_from": str(source),
    }
    with atomic_open(out) as handle:
        torch.save(payload, handle)
    log.info("merged %d LoRA adapters; wrote %s", merged, out)
    return out
