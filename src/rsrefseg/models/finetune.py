"""Which weights train: ``full``, ``frozen`` backbones, or ``lora`` adapters on them (docs/method.md §6)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torch import nn

from rsrefseg.models.checkpoints import pretrained_prefixes
from rsrefseg.models.fused_qkv_lora import is_fused_qkv, split_qkv_adapter

log = logging.getLogger(__name__)

FinetuneMode = Literal["full", "lora", "frozen"]


@dataclass
class LoraSettings:
    """LoRA size (docs/method.md §6: r = alpha = 16, dropout 0). Placement belongs to each backbone.

    Every backbone names its own targets (``lora_targets`` in its config, regular expressions over
    module names inside its pretrained part, peft full-match), so a new backbone family brings its
    placement in its own file and config.

    Attributes:
        r, alpha, dropout: rank, scaling numerator (scale = alpha / r) and adapter-input dropout.
        split_qkv: how CLIP's fused q/k/v projections are adapted (timm's ``attn.qkv``,
            ``nn.MultiheadAttention``'s in-projection). False: one rank-r adapter on the fused weight
            (peft's). True: one rank-r adapter on each of q, k and v, as the authors' release adapts
            its separate projections (:mod:`rsrefseg.models.fused_qkv_lora`). SAM's fused ``qkv`` keeps
            one adapter either way, as in the release (Meta's modules are fused there too).
        extra: further ``peft.LoraConfig`` arguments.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    split_qkv: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.split_qkv, bool):
            raise ValueError(f"model.lora.split_qkv must be true or false, got {self.split_qkv!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"model.lora.r must be a positive integer, got {self.r!r}")


class FinetunableBackbone(Protocol):
    """What :func:`configure_finetuning` needs from a backbone (``ClipEncoder``, ``SamBackbone``, ...)."""

    def requires_grad_(self, requires_grad: bool = True) -> FinetunableBackbone:
        """``nn.Module.requires_grad_``."""

    def named_modules(self) -> Iterable[tuple[str, nn.Module]]:
        """``nn.Module.named_modules`` (pretrained parts are marked on sub-modules)."""

    def freeze_pretrained(self) -> None:
        """Freeze the pretrained weights, keeping trainable whatever the method always trains."""

    def add_lora(self, settings: LoraSettings) -> None:
        """Inject LoRA adapters at the backbone's own targets."""


def inject_lora(
    module: nn.Module,
    targets: Sequence[str],
    settings: LoraSettings,
    *,
    config_key: str,
    split_fused_qkv: bool = False,
) -> None:
    """Wrap every sub-module of ``module`` whose name full-matches one of ``targets`` with LoRA.

    Args:
        module: the backbone part that receives adapters.
        targets: regular expressions over ``module``'s sub-module names (peft full-match).
        settings: rank, alpha, dropout.
        config_key: where the targets come from, named in the error.
        split_fused_qkv: give a fused q/k/v target (nn.MultiheadAttention, a Linear named ``qkv``)
            one rank-r adapter per projection instead of peft's single one (``settings.split_qkv``).

    Raises:
        ValueError: when a pattern matches no module (a typo would silently adapt only part of the
            backbone, or nothing).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not targets:
        return
    modules = dict(module.named_modules())
    dead = [t for t in targets if not any(re.fullmatch(t, name) for name in modules)]
    if dead:
        examples = [n for n in modules if n.endswith(("attn", "qkv"))][:2]
        raise ValueError(
            f"{config_key} {dead} match no module of {type(module).__name__} "
            f"(full match on names such as {examples})"
        )
    matched = [name for name in modules if any(re.fullmatch(t, name) for t in targets)]
    split = [name for name in matched if split_fused_qkv and is_fused_qkv(name, modules[name])]
    rest = [name for name in matched if name not in split]
    if rest:
        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules="|".join(re.escape(name) for name in rest),
            **settings.extra,
        )
        inject_adapter_in_model(config, module)
    for name in split:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        adapter = split_qkv_adapter(
            getattr(parent, child), r=settings.r, alpha=settings.alpha, dropout=settings.dropout
        )
        setattr(parent, child, adapter)


def configure_finetuning(
    backbones: Mapping[str, FinetunableBackbone],
    mode: str,
    lora: LoraSettings | Mapping | None = None,
    *,
    require_pretrained: bool = False,
) -> None:
    """Set ``requires_grad`` of the backbones for a fine-tuning mode, injecting LoRA adapters for ``lora``.

    ``full`` trains both backbones entirely (the mode for random-init tiny backbones); ``frozen``
    freezes their pretrained weights; ``lora`` freezes them and trains low-rank adapters at each
    backbone's targets. What each backbone always trains (SAM's prompt encoder and mask decoder,
    CLIP's logit scale / bias) is its own ``freeze_pretrained``'s business; the prompter is not a
    backbone and always trains.

    Args:
        backbones: ``{config name: backbone}``, e.g. ``{"clip": ClipEncoder, "sam": SamBackbone}``;
            the name appears in the warning about random-init weights (``model.<name>``).
        mode: ``full`` | ``lora`` | ``frozen``.
        lora: LoRA settings for ``lora``.
        require_pretrained: raise instead of warning when ``lora`` / ``frozen`` would freeze a
            backbone that has no pretrained weights.

    Raises:
        ValueError: an unknown mode, or a random-init backbone under ``require_pretrained``.
    """
    if mode not in ("full", "lora", "frozen"):
        raise ValueError(f"finetune must be one of 'full', 'lora', 'frozen', got {mode!r}")
    settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**dict(lora or {}))
    for name, backbone in backbones.items():
        backbone.requires_grad_(True)
        if mode == "full":
            continue
        if not pretrained_prefixes(backbone):
            if require_pretrained:
                raise ValueError(
                    f"finetune={mode} needs pretrained model.{name} weights, but model.{name} is built with "
                    f"random init (no weight file is set): set the {name.upper()} weight file "
                    f"(model.clip.model.pretrained=… / model.sam.sam.checkpoint=…), or "
                    "model.require_pretrained=false to train adapters on random features anyway"
                )
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
