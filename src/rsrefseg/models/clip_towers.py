"""How :class:`ClipEncoder` reaches into each open_clip model family: one small adapter per tower kind.

open_clip keeps its two families differently:

- ``open_clip.CLIP`` (OpenAI-style): ``visual`` is open_clip's own ``VisionTransformer`` (class token,
  ``ln_post``), and the text tower's parts live on the model itself (causal mask, EOT/argmax pooling,
  a bare ``text_projection`` matrix).
- ``open_clip.CustomTextCLIP`` (SigLIP / SigLIP 2): ``visual`` is a ``TimmModel`` wrapping a timm ViT
  ``trunk`` (no class token, a MAP attention-pool head), and ``model.text`` is a ``TextTransformer``
  (bidirectional, pooling the last position, an ``nn.Linear`` projection).

The adapters hold no weights; they are handed the module on every call, so LoRA injection (which
replaces sub-modules) never leaves them pointing at a stale module.
"""

from __future__ import annotations

from typing import Protocol

from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer, text_global_pool
from torch import Tensor, nn


class VisionTower(Protocol):
    """What ClipEncoder needs from an image tower."""

    lora_targets: tuple[str, ...]

    def check(self, visual: nn.Module) -> None:
        """Raise when ``visual`` is configured in a way whose tokens this adapter cannot read."""

    def dims(self, visual: nn.Module) -> dict[str, int]:
        """``vision_dim``, ``grid_size`` and ``image_size`` of the built tower."""

    def tokens(self, visual: nn.Module, images: Tensor) -> Tensor:
        """Args: normalised images B×3×S×S. Returns patch tokens B×g²×C_v after the final norm."""

    def unused(self, visual: nn.Module) -> list[nn.Parameter]:
        """Parameters only the pooled image embedding uses (no loss of ours reaches them)."""

    def embed_patches(self, visual: nn.Module, tokens: Tensor) -> Tensor | None:
        """Patch tokens B×g²×C_v in the shared image–text space (B×g²×E); None where the tower has
        no patch-level map into it. Read only by explanations, never trained."""


def _parameters(*parts: nn.Module | nn.Parameter | None) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for part in parts:
        if isinstance(part, nn.Parameter):
            out.append(part)
        elif isinstance(part, nn.Module):
            out.extend(part.parameters())
    return out


class OpenClipVisionTower:
    """open_clip's ``VisionTransformer``: tokens after ``ln_post`` with the class token dropped."""

    lora_targets = (r"visual\.transformer\.resblocks\.\d+\.attn",)

    def check(self, visual: VisionTransformer) -> None:
        # attentional pooling (CoCa) or a norm applied only after pooling would hand out tokens that
        # are not "patch tokens after the final norm"; patch dropout changes the token count
        if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type == "none":
            raise ValueError(
                "ClipEncoder needs an open_clip VisionTransformer without attentional pooling, with "
                "ln_post before pooling and a class token (pool_type 'tok' or 'avg'); "
                f"got attn_pool={type(visual.attn_pool).__name__}, "
                f"final_ln_after_pool={visual.final_ln_after_pool}, pool_type={visual.pool_type!r}"
            )
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("ClipEncoder needs vision_cfg.patch_dropout=0 (it changes the patch grid)")
        visual.output_tokens = True

    def dims(self, visual: VisionTransformer) -> dict[str, int]:
        return {
            "vision_dim": visual.transformer.width,
            "grid_size": visual.grid_size[0],
            "image_size": visual.image_size[0],
        }

    def tokens(self, visual: VisionTransformer, images: Tensor) -> Tensor:
        _, tokens = visual(images)
        return tokens

    def unused(self, visual: VisionTransformer) -> list[nn.Parameter]:
        return _parameters(visual.proj)

    def embed_patches(self, visual: VisionTransformer, tokens: Tensor) -> Tensor | None:
        # the projection CLIP applies to its pooled token, applied to every patch (MaskCLIP's reading)
        return tokens if visual.proj is None else tokens @ visual.proj


class TimmVisionTower:
    """A timm ViT trunk in open_clip's ``TimmModel`` (SigLIP): ``forward_features`` minus prefix tokens."""

    lora_targets = (r"visual\.trunk\.blocks\.\d+\.attn\.(qkv|proj)",)

    def check(self, visual: TimmModel) -> None:
        trunk = visual.trunk
        needed = ("forward_features", "num_prefix_tokens", "patch_embed", "blocks")
        if not all(hasattr(trunk, name) for name in needed):
            raise TypeError(
                f"ClipEncoder reads patch tokens from timm VisionTransformer trunks; "
                f"{type(trunk).__name__} lacks one of {needed}"
            )

    def dims(self, visual: TimmModel) -> dict[str, int]:
        trunk = visual.trunk
        # the trunk's own input size, not open_clip's vision_cfg.image_size: TimmModel does not resize it
        return {
            "vision_dim": trunk.embed_dim,
            "grid_size": trunk.patch_embed.grid_size[0],
            "image_size": trunk.patch_embed.img_size[0],
        }

    def tokens(self, visual: TimmModel, images: Tensor) -> Tensor:
        trunk = visual.trunk
        return trunk.forward_features(images)[:, trunk.num_prefix_tokens :]

    def embed_patches(self, visual: TimmModel, tokens: Tensor) -> Tensor | None:
        # SigLIP pools with an attention head into a space of the trunk's width; its patch tokens are
        # compared with the sentence as they are. Another width has no patch-level projection.
        head = visual.head
        if isinstance(head, nn.Linear):
            return head(tokens)
        if isinstance(head, nn.Identity) and tokens.shape[-1] == visual.trunk.embed_dim:
            return tokens
        return None

    def unused(self, visual: TimmModel) -> list[nn.Parameter]:
        trunk = visual.trunk
        return _parameters(
            getattr(trunk, "attn_pool", None), getattr(trunk, "fc_norm", None), trunk.head, visual.head
        )


class TextTower:
    """open_clip's text transformer, on the model itself (``CLIP``) or as ``model.text`` (``CustomTextCLIP``).

    Both expose ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``attn_mask`` (None when bidirectional) and ``text_projection``; only the pooling attribute names
    differ (``text_pool_type`` / ``pool_type``).

    Args:
        path: where the tower sits inside the model (``""`` or ``"text"``).
        lora_targets: peft full-match patterns for its attention blocks.
    """

    def __init__(self, *, path: str, lora_targets: tuple[str, ...]) -> None:
        self.path, self.lora_targets = path, lora_targets

    def module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.path) if self.path else model

    def check(self, model: nn.Module) -> None:
        tower = self.module(model)
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
            raise ValueError(
                "ClipEncoder supports text towers without an appended class token and without "
                "pad-masked bidirectional attention (CoCa-style text_cfg.embed_cls / use_pad_mask)"
            )
        if tower.text_projection is None:
            raise ValueError("ClipEncoder needs a text projection (text_cfg.proj_type must not be 'none')")

    def pool_type(self, model: nn.Module) -> str:
        tower = self.module(model)
        return tower.pool_type if isinstance(tower, TextTransformer) else tower.text_pool_type

    def eos_id(self, model: nn.Module) -> int | None:
        tower = self.module(model)
        return tower.eos_id if isinstance(tower, TextTransformer) else getattr(tower, "text_eos_id", None)

    def is_causal(self, model: nn.Module) -> bool:
        return self.module(model).attn_mask is not None

    def context_length(self, model: nn.Module) -> int:
        return self.module(model).positional_embedding.shape[0]

    def dims(self, model: nn.Module) -> dict[str, int]:
        tower = self.module(model)
        proj = tower.text_projection
        embed_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        return {"text_dim": tower.transformer.width, "embed_dim": embed_dim}

    def tokens(self, model: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Args: ids B×L (L ≤ context). Returns tokens B×L×C_t after ``ln_final`` and the
        unprojected pooled feature B×C_t."""
        tower = self.module(model)
        length = ids.shape[1]
        x = tower.token_embedding(ids) + tower.positional_embedding[:length]
        mask = tower.attn_mask
        x = tower.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
        x = tower.ln_final(x)
        return x, text_global_pool(x, ids, self.pool_type(model), eos_token_id=self.eos_id(model))


OPENAI_TEXT = TextTower(path="", lora_targets=(r"transformer\.resblocks\.\d+\.attn",))
CUSTOM_TEXT = TextTower(path="text", lora_targets=(r"text\.transformer\.resblocks\.\d+\.attn",))


def towers_for(model: nn.Module) -> tuple[VisionTower, TextTower]:
    """The adapters for an open_clip model, or a TypeError naming what is supported."""
    from open_clip.model import CLIP, CustomTextCLIP

    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        vision: VisionTower = OpenClipVisionTower()
    elif isinstance(visual, TimmModel):
        vision = TimmVisionTower()
    else:
        raise TypeError(
            f"ClipEncoder supports open_clip VisionTransformer or TimmModel (timm ViT) image towers, "
            f"got {type(visual).__name__}"
        )
    if isinstance(model, CLIP):
        text = OPENAI_TEXT
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        text = CUSTOM_TEXT
    else:
        raise TypeError(
            f"ClipEncoder supports open_clip.CLIP and CustomTextCLIP with a TextTransformer text tower, "
            f"got {type(model).__name__}"
        )
    vision.check(visual)
    text.check(model)
    return vision, text
