"""CLIP as the dual-modal encoder: patch tokens, text tokens, the pooled sentence and logit scale/bias."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from open_clip.model import CLIP, get_model_preprocess_cfg
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from rsrefseg.models.contracts import check_dimensions, resize_square
from rsrefseg.models.finetune import LoraSettings, inject_lora

# OpenAI CLIP's normalisation, open_clip's default when a model carries none.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _plain(value: Any) -> Any:
    """Hydra hands nested dicts as DictConfig; open_clip only accepts plain dicts."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_open_clip_model(
    *, name: str | None = None, config: Mapping[str, Any] | None = None, pretrained: str | None = None
) -> CLIP:
    """Build an open_clip model.

    Args:
        name: an open_clip architecture name (``ViT-B-16``, ...); used when ``config`` is None.
        config: an architecture given inline (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...), built
            with random weights — the tiny test and default-run backbones.
        pretrained: with ``name``: an open_clip pretrained tag or a local checkpoint file.
    """
    if config is not None:
        if pretrained is not None:
            raise ValueError("build_open_clip_model: 'pretrained' needs 'name', not an inline 'config'")
        model = CLIP(**_plain(config))
    elif name is not None:
        import open_clip

        model = open_clip.create_model(name, pretrained=pretrained)
    else:
        raise ValueError("build_open_clip_model: give either 'name' (an open_clip architecture) or 'config'")
    if not isinstance(model, CLIP):
        raise TypeError(
            f"build_open_clip_model: {name!r} builds {type(model).__name__}; "
            "ClipEncoder supports open_clip.CLIP"
        )
    return model


def build_tokenizer(*, name: str | None = None, context_length: int | None = None) -> Any:
    """open_clip's tokenizer for ``name``, or its bundled BPE tokenizer when ``name`` is None."""
    import open_clip

    if name is None:
        return open_clip.SimpleTokenizer(context_length=context_length or 77)
    return open_clip.get_tokenizer(name, context_length=context_length)


class ProjectionLoRA(nn.Module):
    """Low-rank update of a bare projection matrix (peft cannot wrap a top-level nn.Parameter).

    ``W' = W + (alpha / r) · A · B`` with B zero-initialised, so training starts from W.

    Args:
        in_dim, out_dim: the shape of W.
        r: rank; alpha: scaling numerator.
    """

    def __init__(self, in_dim: int, out_dim: int, *, r: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(in_dim, r))
        self.lora_B = nn.Parameter(torch.zeros(r, out_dim))
        nn.init.kaiming_uniform_(self.lora_A.T, a=5**0.5)
        self.scale = alpha / r

    def forward(self, weight: Tensor) -> Tensor:
        """Args: weight in_dim×out_dim. Returns the adapted in_dim×out_dim matrix."""
        return weight + self.scale * (self.lora_A @ self.lora_B)


@dataclass
class TextEncoding:
    """CLIP's reading of a batch of sentences.

    Attributes:
        tokens: B×L×C_t text tokens after the final norm (L = longest sentence in the batch).
        padding_mask: B×L bool, True at padding; valid tokens form a prefix.
        sentence: B×E pooled, projected sentence embedding.
    """

    tokens: Tensor
    padding_mask: Tensor
    sentence: Tensor


class ClipEncoder(nn.Module):
    """Wrap an open_clip CLIP so the rest of the network sees tokens, not CLIP's internals.

    The dimensions are stated in the config (the prompter interpolates them) and checked here
    against the built model, so a mismatch fails at construction rather than at step 1.

    Args:
        model: an ``open_clip.CLIP``.
        tokenizer: callable ``list[str] → B×context_length`` token ids (open_clip tokenizers).
        vision_dim: C_v, width of the patch tokens.
        text_dim: C_t, width of the text tokens.
        embed_dim: width of the pooled sentence embedding.
        grid_size: g, the patch grid side at ``image_size``.
        image_size: the CLIP input side images are resized to.
        pad_token_id: the tokenizer's padding id (0 for open_clip's BPE tokenizer).
        lora_targets: regular expressions over module names inside ``model`` that get LoRA in
            ``finetune=lora`` (METHOD.md §4: vision and text attention).
        lora_text_projection: also adapt the text projection (a bare matrix gets
            :class:`ProjectionLoRA`; an ``nn.Linear`` projection is targeted by name instead).
    """

    def __init__(
        self,
        *,
        model: CLIP,
        tokenizer: Any,
        vision_dim: int,
        text_dim: int,
        embed_dim: int,
        grid_size: int,
        image_size: int,
        pad_token_id: int = 0,
        lora_targets: Sequence[str] = (r".*transformer\.resblocks\.\d+\.attn",),
        lora_text_projection: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.vision_dim, self.text_dim, self.embed_dim = vision_dim, text_dim, embed_dim
        self.grid_size, self.image_size, self.pad_token_id = grid_size, image_size, pad_token_id
        self.lora_targets, self.lora_text_projection = tuple(lora_targets), lora_text_projection
        visual = model.visual
        visual.output_tokens = True
        actual = {
            "vision_dim": visual.transformer.width,
            "text_dim": model.transformer.width,
            "embed_dim": model.text_projection.shape[1],
            "grid_size": visual.grid_size[0],
            "image_size": visual.image_size[0],
        }
        stated = dict(
            vision_dim=vision_dim,
            text_dim=text_dim,
            embed_dim=embed_dim,
            grid_size=grid_size,
            image_size=image_size,
        )
        check_dimensions("ClipEncoder", stated, actual)
        preprocess = get_model_preprocess_cfg(model)
        self.register_buffer(
            "mean", torch.tensor(preprocess.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(preprocess.get("std", OPENAI_STD)).view(1, 3, 1, 1), False)
        self.projection_lora: ProjectionLoRA | None = None
        if model.logit_bias is None:
            # OpenAI-style CLIP has no bias: the dense head then adds 0
            self.register_buffer("zero_bias", torch.zeros(()), persistent=False)

    def freeze_unused(self) -> None:
        """Freeze what the method never uses: the image tower's pooled-embedding projection."""
        if isinstance(self.model.visual.proj, nn.Parameter):
            self.model.visual.proj.requires_grad_(False)

    def freeze_pretrained(self) -> None:
        """Freeze the CLIP towers; the logit scale and bias stay trainable (METHOD.md §4)."""
        self.model.requires_grad_(False)
        self.model.logit_scale.requires_grad_(True)
        if self.model.logit_bias is not None:
            self.model.logit_bias.requires_grad_(True)

    def add_lora(self, settings: LoraSettings) -> None:
        """LoRA on ``lora_targets`` and, when ``lora_text_projection``, on the text projection."""
        targets = list(self.lora_targets)
        proj = self.model.text_projection
        if self.lora_text_projection:
            if isinstance(proj, nn.Linear):
                targets.append(r"text_projection")
            else:
                self.projection_lora = ProjectionLoRA(*proj.shape, r=settings.r, alpha=settings.alpha)
        inject_lora(self.model, targets, settings)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned log logit scale (a scalar parameter)."""
        return self.model.logit_scale.reshape(())

    @property
    def logit_bias(self) -> Tensor:
        """CLIP's learned logit bias, or a constant 0 for models without one."""
        bias = self.model.logit_bias
        return self.zero_bias if bias is None else bias.reshape(())

    def encode_image(self, images: Tensor) -> Tensor:
        """Args: images B×3×H×W in [0, 1]. Returns V0, B×g²×C_v patch tokens after the final norm."""
        images = resize_square(images, self.image_size)
        _, tokens = self.model.visual((images - self.mean) / self.std)
        return tokens

    def tokenize(self, sentences: Sequence[str]) -> Tensor:
        """B sentences → B×L token ids (truncated to the context length, trimmed to the longest)."""
        ids = self.tokenizer(list(sentences))
        length = int((ids != self.pad_token_id).sum(dim=1).max())
        return ids[:, :length]

    def encode_text(self, sentences: Sequence[str]) -> TextEncoding:
        """Encode sentences into text tokens, their padding mask and the pooled sentence embedding.

        Causal attention means valid tokens never see padding, so trimming the batch to its
        longest sentence changes nothing but the cost.
        """
        model = self.model
        ids = self.tokenize(sentences).to(model.positional_embedding.device)
        length = ids.shape[1]
        x = model.token_embedding(ids) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        pooled = text_global_pool(
            x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
        )
        proj = model.text_projection
        if isinstance(proj, nn.Linear):
            pooled = proj(pooled)
        else:
            pooled = pooled @ (proj if self.projection_lora is None else self.projection_lora(proj))
        return TextEncoding(tokens=x, padding_mask=ids == self.pad_token_id, sentence=pooled)
