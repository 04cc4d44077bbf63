"""Which weights train: ``full``, ``frozen`` backbones, or ``lora`` adapters on them (METHOD.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import nn

if TYPE_CHECKING:
    from rsrefseg.models.rsrefseg2 import RSRefSeg2

FinetuneMode = Literal["full", "lora", "frozen"]


@dataclass
class LoraSettings:
    """LoRA placement and size. Targets are regular expressions over module names (peft full-match).

    Defaults follow METHOD.md §4 for open_clip CLIP and segment-anything's ViT: CLIP vision and text
    attention, the text projection, SAM's image-encoder attention (qkv, proj) and its neck convs.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    clip_targets: Sequence[str] = (r".*transformer\.resblocks\.\d+\.attn",)
    clip_text_projection: bool = True
    sam_targets: Sequence[str] = (r"blocks\.\d+\.attn\.(qkv|proj)", r"neck\.(0|2)")
    extra: dict = field(default_factory=dict)


def _inject_lora(module: nn.Module, settings: LoraSettings, targets: Sequence[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        return
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="|".join(f"(?:{t})" for t in targets),
        **settings.extra,
    )
    inject_adapter_in_model(config, module)


def configure_finetuning(model: RSRefSeg2, mode: str, lora: LoraSettings | Mapping | None = None) -> None:
    """Set ``requires_grad`` for a fine-tuning mode, injecting LoRA adapters for ``lora``.

    Always trained: the prompter, SAM's prompt encoder and mask decoder, CLIP's logit scale / bias.
    ``full`` also trains both backbones (the mode for random-init tiny backbones); ``frozen``
    freezes them; ``lora`` freezes them and trains low-rank adapters on the targets.
    """
    if mode not in ("full", "lora", "frozen"):
        raise ValueError(f"finetune must be one of 'full', 'lora', 'frozen', got {mode!r}")
    model.requires_grad_(True)
    if mode == "full":
        return
    model.clip.model.requires_grad_(False)
    model.sam.image_encoder.requires_grad_(False)
    if mode == "lora":
        settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**dict(lora or {}))
        _inject_lora(model.clip.model, settings, settings.clip_targets)
        _inject_lora(model.sam.image_encoder, settings, settings.sam_targets)
        if settings.clip_text_projection:
            model.clip.enable_projection_lora(r=settings.r, alpha=settings.alpha)
    model.clip.model.logit_scale.requires_grad_(True)
    if model.clip.model.logit_bias is not None:
        model.clip.model.logit_bias.requires_grad_(True)


def parameter_report(model: nn.Module, components: Sequence[str]) -> list[tuple[str, int, int]]:
    """(component, trainable, total) parameter counts for named child modules, plus a total row."""
    rows = []
    for name in components:
        params = list(model.get_submodule(name).parameters())
        rows.append((name, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    params = list(model.parameters())
    rows.append(("total", sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    return rows
