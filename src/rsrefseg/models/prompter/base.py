"""The contract between a prompter and the rest of the network."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


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


#: Prompters set ``emits_queries = False`` when they never return Stage-0 queries (q2): the contrastive
#: loss then has nothing to align, and its temperature is frozen so every trainable weight gets a
#: gradient (DDP needs no unused-parameter search).
EMITS_QUERIES_ATTR = "emits_queries"


def emits_queries(prompter: object) -> bool:
    """Whether ``prompter`` returns Stage-0 queries (default True)."""
    return bool(getattr(prompter, EMITS_QUERIES_ATTR, True))
