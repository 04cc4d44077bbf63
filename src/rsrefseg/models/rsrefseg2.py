"""RSRefSeg 2: CLIP localises, the prompter turns that into prompts, SAM draws the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from rsrefseg.models.clip_encoder import ClipEncoder
from rsrefseg.models.finetune import FinetuneMode, LoraSettings, configure_finetuning
from rsrefseg.models.prompter import Prompter, PrompterOutput
from rsrefseg.models.prompter.base import check_prompter
from rsrefseg.models.sam_backbone import SamBackbone


@dataclass
class RSRefSeg2Output:
    """Attributes:
    logits: B×1×M×M mask logits at SAM's low-resolution output (M = 4 × SAM's embedding grid).
    prompts: the prompter's output (sparse, dense, Stage-0 queries).
    vision_tokens: V0, B×g²×C_v CLIP patch tokens (for the contrastive loss).
    grid_size: g.
    """

    logits: Tensor
    prompts: PrompterOutput
    vision_tokens: Tensor
    grid_size: int


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

    def forward(self, images: Tensor, sentences: Sequence[str]) -> RSRefSeg2Output:
        """Args:
        images: B×3×H×W in [0, 1] (each branch resizes to its own input size).
        sentences: B referring expressions.
        """
        if len(sentences) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(sentences)} sentences")
        vision_tokens = self.clip.encode_image(images)
        text = self.clip.encode_text(sentences)
        prompts = self.prompter(
            vision_tokens,
            text.tokens,
            text.padding_mask,
            text.sentence,
            self.clip.logit_scale,
            self.clip.logit_bias,
        )
        logits = self.sam.decode(self.sam.encode_image(images), prompts.sparse, prompts.dense)
        grid = round(vision_tokens.shape[1] ** 0.5)
        return RSRefSeg2Output(logits=logits, prompts=prompts, vision_tokens=vision_tokens, grid_size=grid)
