"""CLIP as the dual-modal encoder: patch tokens, text tokens, the pooled sentence and logit scale/bias.

Works for both open_clip families (OpenAI-style ``CLIP`` and SigLIP-style ``CustomTextCLIP``); what
differs between them lives in :mod:`rsrefseg.models.clip_towers`, loading in
:mod:`rsrefseg.models.clip_loading`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from open_clip.model import CLIP, CustomTextCLIP, get_model_preprocess_cfg
from torch import Tensor, nn

from rsrefseg.models.clip_loading import build_open_clip_model, build_tokenizer, tokenizer_special_ids
from rsrefseg.models.clip_towers import towers_for
from rsrefseg.models.contracts import check_dimensions, resize_square
from rsrefseg.models.finetune import LoraSettings, inject_lora

__all__ = [
    "ClipEncoder",
    "ProjectionLoRA",
    "TextEncoding",
    "build_open_clip_model",
    "build_tokenizer",
    "sentence_lengths",
]

# OpenAI CLIP's normalisation, open_clip's default when a model carries none.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


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
        tokens: B×L×C_t text tokens after the final norm. L is the longest sentence in the batch
            for causal towers (OpenAI-style) and the full context for bidirectional ones (SigLIP).
        padding_mask: B×L bool, True at padding; valid tokens (end-of-sentence included) form a prefix.
        sentence: B×E pooled, projected sentence embedding.
    """

    tokens: Tensor
    padding_mask: Tensor
    sentence: Tensor


def sentence_lengths(ids: Tensor, *, pad_id: int, eos_id: int | None) -> Tensor:
    """Valid tokens per row of B×L ids: up to and including the first end-of-sentence token.

    Counting up to the end token rather than counting non-pad ids matters twice: open_clip's BPE pads
    with id 0, which is also the token "!", and SigLIP's T5 tokenizer pads with its end token (id 1).
    Rows without an end token end at their first pad, or fill the whole context.
    """
    length = ids.shape[1]

    def first(hit: Tensor) -> Tensor:
        return torch.where(hit.any(dim=1), hit.int().argmax(dim=1), length)

    lengths = first(ids == pad_id)
    if eos_id is not None:
        ends = ids == eos_id
        lengths = torch.where(ends.any(dim=1), first(ends) + 1, lengths)
    return lengths


class ClipEncoder(nn.Module):
    """Wrap an open_clip model so the rest of the network sees tokens, not CLIP's internals.

    The dimensions are stated in the config (the prompter interpolates them) and checked here
    against the built model, so a mismatch fails at construction rather than at step 1.

    Text padding follows the text tower (docs/deviations.md §1: a sentence's embedding must not depend
    on the rest of the batch). A causal tower pooling a real token (OpenAI CLIP: EOT) never lets valid
    tokens see padding, so batches are trimmed to their longest sentence. A bidirectional tower that
    pools the last position (SigLIP) was trained on sequences padded to its full context, so every
    sentence is padded to that context, unless ``pad_to_longest`` reproduces the release. Longer
    text is truncated to the context (flaw 6).

    Args:
        model: an ``open_clip.CLIP`` or ``open_clip.CustomTextCLIP`` (timm ViT image tower).
        tokenizer: callable ``list[str] → B×context_length`` token ids (open_clip tokenizers).
        vision_dim: C_v, width of the patch tokens.
        text_dim: C_t, width of the text tokens.
        embed_dim: width of the pooled sentence embedding.
        grid_size: g, the patch grid side at ``image_size``.
        image_size: the CLIP input side images are resized to.
        pad_token_id: the tokenizer's padding id; None = ask the tokenizer (0 for open_clip's BPE).
        lora_targets: regular expressions (peft full-match) over module names inside ``model`` that
            get LoRA in ``finetune=lora``; None = the family's vision and text attention (docs/method.md §6).
        lora_text_projection: also adapt the text projection (a bare matrix gets
            :class:`ProjectionLoRA`; an ``nn.Linear`` projection is targeted by name instead).
        pad_to_longest: True reproduces the release: every tower's text is padded to the batch's
            longest sentence, so a bidirectional tower (SigLIP) attends to a batch-dependent number
            of pads and pools the last position — a pad for all but the longest sentences — and a
            sentence's encoding depends on its batch. False (ours): see above.
        antialias: antialias the bilinear resize to CLIP's input (as CLIP's own preprocessing
            does). False reproduces the release's plain bilinear resize, which aliases when it
            downsamples (1024 → 512 px for the paper's model).
    """

    def __init__(
        self,
        *,
        model: CLIP | CustomTextCLIP,
        tokenizer: Any,
        vision_dim: int,
        text_dim: int,
        embed_dim: int,
        grid_size: int,
        image_size: int,
        pad_token_id: int | None = None,
        lora_targets: Sequence[str] | None = None,
        lora_text_projection: bool = True,
        pad_to_longest: bool = False,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.vision_tower, self.text_tower = towers_for(model)
        self.vision_dim, self.text_dim, self.embed_dim = vision_dim, text_dim, embed_dim
        self.grid_size, self.image_size = grid_size, image_size
        if lora_targets is None:
            lora_targets = self.vision_tower.lora_targets + self.text_tower.lora_targets
        self.lora_targets, self.lora_text_projection = tuple(lora_targets), lora_text_projection
        stated = dict(
            vision_dim=vision_dim,
            text_dim=text_dim,
            embed_dim=embed_dim,
            grid_size=grid_size,
            image_size=image_size,
        )
        actual = {**self.vision_tower.dims(model.visual), **self.text_tower.dims(model)}
        check_dimensions("ClipEncoder", stated, actual)

        text = self.text_tower
        self.pads_to_context = not pad_to_longest and (
            not text.is_causal(model) or text.pool_type(model) == "last"
        )
        self.antialias = antialias
        self.context_length = text.context_length(model)
        self._check_tokenizer_context(getattr(tokenizer, "context_length", None))
        tokenizer_pad, self.eos_token_id = tokenizer_special_ids(tokenizer)
        self.pad_token_id = tokenizer_pad if pad_token_id is None else pad_token_id
        if self.pad_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} does not state its padding id; set model.clip.pad_token_id"
            )

        preprocess = get_model_preprocess_cfg(model)
        mean, std = preprocess.get("mean", OPENAI_MEAN), preprocess.get("std", OPENAI_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.projection_lora: ProjectionLoRA | None = None
        if model.logit_bias is None:
            # OpenAI-style CLIP has no bias: the dense head then adds 0
            self.register_buffer("zero_bias", torch.zeros(()), persistent=False)

    def _check_tokenizer_context(self, tokens: int | None) -> None:
        """The tokenizer must fit the positional table, and fill it exactly when we pad to context."""
        if tokens is None:
            return
        if tokens > self.context_length or (self.pads_to_context and tokens != self.context_length):
            need = "exactly" if self.pads_to_context else "at most"
            why = " (it pools the last position, trained on padded text)" if self.pads_to_context else ""
            raise ValueError(
                f"the tokenizer's context length is {tokens} but the text tower needs {need} "
                f"{self.context_length}{why}; set model.clip.tokenizer.context_length={self.context_length}"
            )

    def freeze_unused(self, *, uses_sentence: bool = True) -> None:
        """Freeze what no loss reaches: the image tower's pooled-embedding projection / pooling head.

        Args:
            uses_sentence: False when the prompter never reads the pooled sentence embedding t nor
                the logit scale / bias (no dense prompt): the text projection, its adapter and the
                logit scale / bias are frozen too, so DDP finds every trainable weight used.
        """
        for parameter in self.vision_tower.unused(self.model.visual):
            parameter.requires_grad_(False)
        if not uses_sentence:
            projection = self.text_tower.module(self.model).text_projection
            projection.requires_grad_(False)  # a Parameter, or a Linear possibly wrapped by peft LoRA
            if self.projection_lora is not None:
                self.projection_lora.requires_grad_(False)
            self.model.logit_scale.requires_grad_(False)
            if self.model.logit_bias is not None:
                self.model.logit_bias.requires_grad_(False)

    def freeze_pretrained(self) -> None:
        """Freeze the CLIP towers; the logit scale and bias stay trainable (docs/method.md §6)."""
        self.model.requires_grad_(False)
        self._train_logit_scale_and_bias()

    def _train_logit_scale_and_bias(self) -> None:
        self.model.logit_scale.requires_grad_(True)
        if self.model.logit_bias is not None:
            self.model.logit_bias.requires_grad_(True)

    def add_lora(self, settings: LoraSettings) -> None:
        """LoRA on ``lora_targets`` and, when ``lora_text_projection``, on the text projection.

        Raises:
            ValueError: when a target pattern matches no module (a typo would silently adapt
                only one tower).
        """
        targets = list(self.lora_targets)
        text_path = self.text_tower.path
        proj = self.text_tower.module(self.model).text_projection
        if self.lora_text_projection:
            if isinstance(proj, nn.Parameter):
                adapter = ProjectionLoRA(*proj.shape, r=settings.r, alpha=settings.alpha)
                self.projection_lora = adapter.to(proj)
            else:
                targets.append(re.escape(f"{text_path}." if text_path else "") + "text_projection")
        inject_lora(
            self.model,
            targets,
            settings,
            config_key="model.clip.lora_targets",
            split_fused_qkv=settings.split_qkv,
        )
        # peft marks every non-adapter weight of the model it injects into as frozen
        self._train_logit_scale_and_bias()

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute both towers' transformer blocks in backward (open_clip's ``set_grad_checkpointing``:
        non-reentrant ``torch.utils.checkpoint`` per residual block; timm's per block for SigLIP)."""
        self.model.set_grad_checkpointing(enabled)

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
        images = resize_square(images, self.image_size, antialias=self.antialias)
        return self.vision_tower.tokens(self.model.visual, (images - self.mean) / self.std)

    def embed_patches(self, vision_tokens: Tensor) -> Tensor | None:
        """V0 (B×g²×C_v) in the image–text space (B×g²×E) where the sentence embedding lives, or None
        when the tower has no patch-level map into it (see the towers' ``embed_patches``)."""
        return self.vision_tower.embed_patches(self.model.visual, vision_tokens)

    def count_tokens(self, sentence: str) -> int:
        """How many token positions ``sentence`` needs, start / end tokens included, before truncation."""
        tokenizer = self.tokenizer
        inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        if inner is not None and callable(inner):
            return len(inner(tokenizer.clean_fn(sentence))["input_ids"])
        if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
            return len(tokenizer.encode(sentence)) + 2  # open_clip's BPE adds start and end tokens
        raise TypeError(f"cannot count the tokens of {type(tokenizer).__name__}")

    def tokenize(self, sentences: Sequence[str]) -> Tensor:
        """B sentences → B×L token ids, truncated to the context; trimmed to the longest sentence
        unless the tower pads to its full context."""
        ids = self.tokenizer(list(sentences))
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"the tokenizer returned {ids.shape[1]} tokens per sentence, more than the text "
                f"tower's {self.context_length} positions; "
                f"set model.clip.tokenizer.context_length={self.context_length}"
            )
        if self.pads_to_context:
            return ids
        return ids[:, : int(self.padding_lengths(ids).max())]

    def padding_lengths(self, ids: Tensor) -> Tensor:
        """B valid-token counts of B×L ids (see :func:`sentence_lengths`)."""
        return sentence_lengths(ids, pad_id=self.pad_token_id, eos_id=self.eos_token_id)

    def encode_text(self, sentences: Sequence[str]) -> TextEncoding:
        """Encode sentences into text tokens, their padding mask and the pooled sentence embedding."""
        tower = self.text_tower.module(self.model)
        ids = self.tokenize(sentences).to(tower.positional_embedding.device)
        tokens, pooled = self.text_tower.tokens(self.model, ids)
        proj = tower.text_projection
        if isinstance(proj, nn.Parameter):
            sentence = pooled @ (proj if self.projection_lora is None else self.projection_lora(proj))
        else:  # nn.Linear, or peft's LoRA wrapper around it (not an nn.Linear subclass)
            sentence = proj(pooled)
        positions = torch.arange(ids.shape[1], device=ids.device)
        padding_mask = positions[None, :] >= self.padding_lengths(ids)[:, None]
        return TextEncoding(tokens=tokens, padding_mask=padding_mask, sentence=sentence)
