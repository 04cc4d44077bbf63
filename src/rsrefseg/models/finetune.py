"""Which weights train: ``full``, ``frozen`` backbones, or ``lora`` adapters on them (METHOD.md §4)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from torch import nn

from rsrefseg.models.checkpoints import pretrained_prefixes

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from rsrefseg.models.rsrefseg2 import RSRefSeg2

FinetuneMode = Literal["full", "lora", "frozen"]


@dataclass
class LoraSettings:
    """LoRA size (METHOD.md §4: r = alpha = 16, dropout 0). Placement belongs to each backbone.

    Every backbone names its own targets (``lora_targets`` in its config, regular expressions over
    module names inside its pretrained part, peft full-match), so a new backbone family brings its
    placement in its own file and config.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)


class FinetunableBackbone(Protocol):
    """What :func:`configure_finetuning` needs from a backbone (``ClipEncoder``, ``SamBackbone``, ...)."""

    def freeze_pretrained(self) -> None:
        """Freeze the pretrained weights, keeping trainable whatever the method always trains."""

    def add_lora(self, settings: LoraSettings) -> None:
        """Inject LoRA adapters at the backbone's own targets."""


def inject_lora(
    module: nn.Module, targets: Sequence[str], settings: LoraSettings, *, config_key: str
) -> None:
    """Wrap every sub-module of ``module`` whose name full-matches one of ``targets`` with LoRA.

    Args:
        module: the backbone part that receives adapters.
        targets: regular expressions over ``module``'s sub-module names (peft full-match).
        settings: rank, alpha, dropout.
        config_key: where the targets come from, named in the error.

    Raises:
        ValueError: when a pattern matches no module (a typo would silently adapt only part of the
            backbone, or nothing).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        return
    names = [name for name, _ in module.named_modules()]
    dead = [t for t in targets if not any(re.fullmatch(t, name) for name in names)]
    if dead:
        examples = [n for n in names if n.endswith(("attn", "qkv"))][:2]
        raise ValueError(
            f"{config_key} {dead} match no module of {type(module).__name__} "
            f"(full match on names such as {examples})"
        )
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
    freezes their pretrained weights; ``lora`` freezes them and trains low-rank adapters at each
    backbone's targets.
    """
    if mode not in ("full", "lora", "frozen"):
        raise ValueError(f"finetune must be one of 'full', 'lora', 'frozen', got {mode!r}")
    model.requires_grad_(True)
    if mode == "full":
        return
    settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**dict(lora or {}))
    backbones: tuple[tuple[str, FinetunableBackbone], ...] = (("clip", model.clip), ("sam", model.sam))
    for name, backbone in backbones:
        if not pretrained_prefixes(backbone):
            log.warning(
                "finetune=%s with random-init model.%s weights: frozen random features learn little; "
                "point the config at pretrained weights or use finetune=full",
                mode,
                name,
            )
        backbone.freeze_pretrained()
        if mode == "lora":
            backbone.add_lora(settings)


def parameter_report(
    parts: Mapping[str, Iterable[nn.Parameter]], model: nn.Module
) -> list[tuple[str, int, int]]:
    """(component, trainable, total) parameter counts per named part, plus a ``total`` row over ``model``."""
    rows = []
    for name, params in [*parts.items(), ("total", model.parameters())]:
        params = list(params)
        rows.append((name, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    return rows
