"""The contract between a prompter and the rest of the network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class PrompterOutput:
    """What every prompter returns.

    Attributes:
        sparse: B×P×d sparse prompt embeddings for SAM's mask decoder, or None (no sparse prompts).
        dense: B×1×M×M mask-prompt logits for SAM's prompt encoder (M = 4 × SAM's embedding grid),
            or None (SAM's learned "no mask" embedding is used).
        q1: B×N×C_t Stage-0 query set 1 (for the orthogonality loss), or None.
        q2: B×N×C_t Stage-0 query set 2 (for the orthogonality and contrastive losses), or None.
    """

    sparse: Tensor | None
    dense: Tensor | None
    q1: Tensor | None = None
    q2: Tensor | None = None


class DensePrompt(Protocol):
    """A prompter's dense-prompt head: whatever it computes, it emits M×M mask-prompt logits."""

    #: M, checked against SAM's mask input at construction
    mask_size: int


@runtime_checkable
class Prompter(Protocol):
    """What :class:`~rsrefseg.models.RSRefSeg2` and the training module read from a prompter.

    A prompter is an ``nn.Module`` called as
    ``prompter(V0, T, text_padding_mask, t, logit_scale, logit_bias) → PrompterOutput``
    (V0 B×g²×C_v, T B×L×C_t, text_padding_mask B×L bool True at padding, t B×E, scalars) and
    declares three things about itself, so that the network freezes exactly what no loss reaches
    (DDP then needs no unused-parameter search):

    Attributes:
        dense_head: the module emitting the dense prompt, or None when the prompter emits none
            (SAM then trains its "no mask" embedding instead of its mask branch).
        emits_queries: whether ``PrompterOutput.q2`` is set. Without Stage-0 queries the contrastive
            loss has nothing to align and its temperature is frozen.
        uses_sentence: whether the prompter reads the pooled sentence embedding t and CLIP's logit
            scale / bias. When False, CLIP's text projection (and its adapter) and the logit
            scale / bias are frozen.
    """

    dense_head: DensePrompt | None
    emits_queries: bool
    uses_sentence: bool

    def __call__(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        text_padding_mask: Tensor | None,
        sentence: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
    ) -> PrompterOutput: ...


def check_prompter(prompter: nn.Module) -> None:
    """Fail at construction when ``prompter`` does not declare the :class:`Prompter` attributes.

    Raises:
        TypeError: naming the prompter's class and the attributes it lacks.
    """
    missing = [
        name for name in ("dense_head", "emits_queries", "uses_sentence") if not hasattr(prompter, name)
    ]
    if missing:
        raise TypeError(
            f"{type(prompter).__name__} is not a Prompter: it must declare {missing} "
            "(see rsrefseg.models.prompter.base.Prompter)"
        )
