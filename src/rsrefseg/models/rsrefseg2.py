"""RSRefSeg 2: CLIP localises, the prompter turns that into prompts, SAM draws the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from rsrefseg.models.clip_encoder import ClipEncoder
from rsrefseg.models.compilation import CompiledCall, CompileMode, compile_method
from rsrefseg.models.finetune import FinetuneMode, LoraSettings, configure_finetuning
from rsrefseg.models.prompter import Prompter, PrompterOutput
from rsrefseg.models.prompter.base import check_prompter
from rsrefseg.models.sam2_backbone import Sam2Features
from rsrefseg.models.sam_backbone import SamBackbone


@dataclass
class RSRefSeg2Output:
    """Attributes:
    logits: B×1×M×M mask logits at SAM's low-resolution output (M = 4 × SAM's embedding grid).
    prompts: the prompter's output (sparse, dense, Stage-0 queries).
    vision_tokens: V0, B×g²×C_v CLIP patch tokens (for the contrastive loss).
    grid_size: g.
    sentence: t, B×E pooled sentence embeddings.
    """

    logits: Tensor
    prompts: PrompterOutput
    vision_tokens: Tensor
    grid_size: int
    sentence: Tensor


@dataclass
class ImageEncoding:
    """What the two image encoders made of N images, computed once and read by any number of sentences.

    Attributes:
        vision_tokens: V0, N×g²×C_v CLIP patch tokens.
        sam_features: SAM's image features for the N images (a N×d×h×w tensor, or SAM 2's
            :class:`~rsrefseg.models.sam2_backbone.Sam2Features`).
    """

    vision_tokens: Tensor
    sam_features: Tensor | Sam2Features

    def select(self, index: Tensor) -> ImageEncoding:
        """The encodings of images ``index`` (B long, repeats allowed): one row per sentence."""
        features = self.sam_features
        features = features[index] if isinstance(features, Tensor) else features.select(index)
        return ImageEncoding(vision_tokens=self.vision_tokens[index], sam_features=features)


class RSRefSeg2(nn.Module):
    """The decoupled network of docs/method.md §1.

    Args:
        clip: the dual-modal encoder.
        prompter: any :class:`~rsrefseg.models.prompter.base.Prompter`: called with (V0, T, padding
            mask, t, logit scale, logit bias) → PrompterOutput, declaring ``dense_head``,
            ``emits_queries`` and ``uses_sentence``.
        sam: the segmenter.
        finetune: ``full`` | ``lora`` | ``frozen`` (see :func:`configure_finetuning`).
        lora: LoRA settings for ``finetune='lora'``.
        require_pretrained: in ``lora`` / ``frozen`` mode, refuse a backbone without pretrained
            weights instead of warning (the paper recipes: adapters on random features learn nothing).
        activation_checkpointing: recompute the backbones' transformer blocks in backward (CLIP's
            two towers, SAM's ViT or Hiera blocks) instead of storing their activations: less
            activation memory for about one more backbone forward per step. Gradients are unchanged.
        compile: ``torch.compile`` CLIP's and SAM's image encoders and the prompter
            (:meth:`compile_parts`); opt-in, compile time is logged on the first call.
        compile_mode: ``torch.compile``'s ``mode`` for ``compile`` (inductor only).
        compile_backend: ``torch.compile``'s backend: ``inductor`` (kernels generated and compiled:
            minutes of C++ compilation on a CPU the first time) or ``aot_eager`` (graph capture only).
    """

    def __init__(
        self,
        *,
        clip: ClipEncoder,
        prompter: Prompter,
        sam: SamBackbone,
        finetune: FinetuneMode = "full",
        lora: LoraSettings | dict | None = None,
        require_pretrained: bool = False,
        activation_checkpointing: bool = False,
        compile: bool = False,
        compile_mode: CompileMode = "default",
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        check_prompter(prompter)
        self.clip, self.prompter, self.sam = clip, prompter, sam
        dense_head = prompter.dense_head
        if dense_head is not None and dense_head.mask_size != sam.mask_size:
            raise ValueError(
                f"prompter dense prompt is {dense_head.mask_size}² but SAM's mask input is {sam.mask_size}²"
            )
        configure_finetuning(
            {"clip": clip, "sam": sam}, finetune, lora, require_pretrained=require_pretrained
        )
        sam.freeze_unused(uses_dense=dense_head is not None)
        clip.freeze_unused(uses_sentence=prompter.uses_sentence)
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:
            self.set_activation_checkpointing(True)
        self.compiled_parts: dict[str, CompiledCall] = {}
        if compile:
            self.compile_parts(compile_mode, backend=compile_backend)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the backbones' transformer blocks in backward (or stop doing so)."""
        self.clip.set_activation_checkpointing(enabled)
        self.sam.set_activation_checkpointing(enabled)
        self.activation_checkpointing = enabled

    def compile_parts(
        self, mode: CompileMode = "default", *, backend: str = "inductor"
    ) -> dict[str, CompiledCall]:
        """``torch.compile`` (``dynamic=False``) CLIP's image encoder, SAM's image encoder and the prompter.

        Each is replaced on its own instance (module tree and state-dict keys unchanged); the text
        tower, SAM's prompt encoder and decoder stay eager (variable sentence lengths, small).
        Compilation happens on the first call, whose time is logged once per part.

        Returns:
            ``{part: CompiledCall}``; ``first_call_seconds`` holds each part's compile-inclusive time.
        """
        if self.compiled_parts:
            raise RuntimeError("RSRefSeg2.compile_parts was already called on this network")
        parts = {
            "clip.encode_image": (self.clip, "encode_image"),
            "sam.encode_image": (self.sam, "encode_image"),
            "prompter": (self.prompter, "forward"),
        }
        self.compiled_parts = {
            name: compile_method(owner, attr, name=name, mode=mode, backend=backend)
            for name, (owner, attr) in parts.items()
        }
        return self.compiled_parts

    def components(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by component, for reports: CLIP vision / text, the prompter, each part of SAM.

        ``clip.text`` is everything of CLIP outside the image tower (text tower, projection and its
        adapter, logit scale / bias); ``sam.<part>`` follows the SAM backbone's own sub-modules.
        """
        vision = list(self.clip.model.visual.parameters())
        vision_ids = {id(p) for p in vision}
        parts = {
            "clip.vision": vision,
            "clip.text": [p for p in self.clip.parameters() if id(p) not in vision_ids],
            "prompter": list(self.prompter.parameters()),
        }
        for name, child in self.sam.named_children():
            params = list(child.parameters())
            if params:
                parts[f"sam.{name}"] = params
        own = list(self.sam.parameters(recurse=False))
        if own:
            parts["sam.other"] = own
        return parts

    def forward(
        self, images: Tensor, sentences: Sequence[str], image_index: Tensor | None = None
    ) -> RSRefSeg2Output:
        """Args:
        images: N×3×H×W in [0, 1] (each branch resizes to its own input size).
        sentences: B referring expressions.
        image_index: B long, the image each sentence refers to; None = sentence i is about image i
            (B = N). Several sentences of one image share its encodings.
        """
        return self.decode(self.encode_images(images), sentences, image_index)

    def encode_images(self, images: Tensor) -> ImageEncoding:
        """Run CLIP's and SAM's image encoders once. Args: images N×3×H×W in [0, 1]."""
        return ImageEncoding(
            vision_tokens=self.clip.encode_image(images), sam_features=self.sam.encode_image(images)
        )

    def decode(
        self, encoding: ImageEncoding, sentences: Sequence[str], image_index: Tensor | None = None
    ) -> RSRefSeg2Output:
        """Everything after the image encoders: text encoder, prompter, SAM's prompt encoder and decoder.

        Args:
            encoding: N images' encodings (:meth:`encode_images`).
            sentences: B referring expressions.
            image_index: B long indices into the N images; None = one sentence per image (B = N).
        """
        count = encoding.vision_tokens.shape[0]
        if image_index is None:
            if len(sentences) != count:
                raise ValueError(f"{count} images but {len(sentences)} sentences")
        else:
            if image_index.shape != (len(sentences),):
                raise ValueError(
                    f"image_index has shape {tuple(image_index.shape)}; expected ({len(sentences)},), "
                    "one image per sentence"
                )
            encoding = encoding.select(image_index.to(encoding.vision_tokens.device))
        vision_tokens = encoding.vision_tokens
        text = self.clip.encode_text(sentences)
        prompts = self.prompter(
            vision_tokens,
            text.tokens,
            text.padding_mask,
            text.sentence,
            self.clip.logit_scale,
            self.clip.logit_bias,
        )
        logits = self.sam.decode(encoding.sam_features, prompts.sparse, prompts.dense)
        grid = round(vision_tokens.shape[1] ** 0.5)
        return RSRefSeg2Output(
            logits=logits,
            prompts=prompts,
            vision_tokens=vision_tokens,
            grid_size=grid,
            sentence=text.sentence,
        )
