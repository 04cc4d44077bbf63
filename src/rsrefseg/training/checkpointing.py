"""Our checkpoints: what a run saves, strict reloading, and LoRA-merged export for inference.

A run saves the trainable parameters, every buffer, and the frozen weights that no pretrained
source can restore (random-init backbones), next to the resolved run configuration. A LoRA run's
checkpoint therefore holds the prompter, SAM's decoder side, the adapters and CLIP's logit
scale / bias — not the backbones, which a fresh build reloads from their own files.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsrefseg.models.checkpoints import describe_key_mismatch, pretrained_prefixes
from rsrefseg.models.fused_qkv_lora import merge_split_qkv

#: value of ``checkpoint["rsrefseg_weights"]``: which weights a checkpoint holds
TRAINABLE, FULL = "trainable", "full"
#: config keys that name a backbone's pretrained source; a merged export clears them
PRETRAINED_KEYS = (("model", "clip", "model", "pretrained"), ("model", "sam", "sam", "checkpoint"))


def saved_keys(module: nn.Module) -> set[str]:
    """State-dict keys of ``module`` that our checkpoints hold (see the module docstring)."""
    prefixes = tuple(pretrained_prefixes(module))
    keys = {name for name, _ in module.named_buffers()} & set(module.state_dict())
    for name, param in module.named_parameters():
        if param.requires_grad or not (prefixes and name.startswith(prefixes)):
            keys.add(name)
    return keys


def select_state(module: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The part of ``state`` (``module``'s full state dict) that a checkpoint keeps."""
    keys = saved_keys(module)
    return {k: v for k, v in state.items() if k in keys}


def check_checkpoint_state(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    weights: str,
    source: str | Path,
    network: str = "its config's network",
    hint: str = "",
) -> None:
    """Fail unless ``state`` has exactly the keys and shapes a checkpoint of ``module`` must have.

    Args:
        module: the freshly built module (pretrained backbones already loaded).
        state: the checkpoint's state dict.
        weights: ``trainable`` (our default) or ``full`` (every weight; merged exports, old runs).
        source: the checkpoint file, named in the error.
        network: which network ``module`` is, for the error.
        hint: appended to the error (e.g. how the configs differ).
    """
    if weights not in (TRAINABLE, FULL):
        raise ValueError(f"{source}: rsrefseg_weights={weights!r}; expected {TRAINABLE!r} or {FULL!r}")
    own = module.state_dict()
    problem = describe_key_mismatch(own, state, saved_keys(module) if weights == TRAINABLE else set(own))
    if problem:
        raise ValueError(f"checkpoint {source} ({weights} weights) does not fit {network}: {problem}{hint}")


def model_config_differences(
    stored: Mapping[str, Any] | None, current: Mapping[str, Any], *, limit: int = 8
) -> list[str]:
    """The ``model.*`` values in which a checkpoint's stored run config and this run's config differ.

    Returns:
        ``"model.<key>: checkpoint <value>, this run <value>"`` per differing key (``limit`` at most,
        then a count of the rest); empty when either config lacks a model node or the models agree.
    """
    if not (stored and stored.get("model") and current.get("model")):
        return []
    theirs, ours = (
        flatten_config(stored["model"], "model"),
        flatten_config(current.get("model") or {}, "model"),
    )
    absent = "(absent)"
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k, absent) != ours.get(k, absent))
    lines = [f"{k}: checkpoint {theirs.get(k, absent)!r}, this run {ours.get(k, absent)!r}" for k in keys]
    return lines[:limit] + ([f"… (+{len(lines) - limit} more)"] if len(lines) > limit else [])


def flatten_config(node: Any, prefix: str) -> dict[str, Any]:
    """A config tree as ``{"prefix.a.b": leaf}`` (for listing the keys two configs differ in)."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten_config(value, f"{prefix}.{key}"))
    return out


def merge_lora(net: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and remove the adapter, in place.

    Handles peft's LoRA layers (``merge()`` then unwrap to the base layer), our split-q/k/v
    adapters (``model.lora.split_qkv``) and our ``ProjectionLoRA`` on a bare text-projection
    matrix. Returns the number of adapters merged.
    """
    from peft.tuners.lora import LoraLayer

    merged = merge_split_qkv(net)
    while True:
        # outermost first, names re-read after each unwrap: peft nests adapters (its
        # MultiheadAttention wrapper holds a LoRA-wrapped out_proj) and merges the inner ones with it
        found = next(((n, m) for n, m in net.named_modules() if isinstance(m, LoraLayer)), None)
        if found is None:
            break
        name, module = found
        if hasattr(module, "unload_and_optionally_merge_module"):
            # peft's MultiheadAttention keeps merged weights as plain tensors; this re-registers them
            base = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            module.merge(safe_merge=True)
            base = module.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, base)
        merged += 1
    for module in net.modules():
        projection_lora = getattr(module, "projection_lora", None)
        if projection_lora is not None:
            with torch.no_grad():
                module.model.text_projection.copy_(projection_lora(module.model.text_projection))
            module.projection_lora = None
            merged += 1
    return merged


def merged_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of a merged export: no LoRA, no pretrained sources (the file holds every weight)."""
    config = copy.deepcopy(dict(run_config))
    config["model"]["finetune"] = "frozen"
    for path in PRETRAINED_KEYS:
        node = config
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = None
    return config
