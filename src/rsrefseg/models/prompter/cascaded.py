"""The cascaded second-order prompter of RSRefSeg 2 (docs/method.md §2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rsrefseg.models.blocks import (
    MLP,
    AttentionLayer,
    CrossAttentionMLP,
    masked_adaptive_avg_pool,
    resize_grid_pe,
)
from rsrefseg.models.prompter.base import PrompterOutput
from rsrefseg.models.prompter.heads import DensePromptHead


class DecompositionLayer(nn.Module):
    """Stage 0: split the sentence into two complementary query sets Q1, Q2 (one layer)."""

    def __init__(self, text_dim: int, *, internal_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        attn = dict(internal_dim=internal_dim, num_heads=num_heads)
        self.q1_self = AttentionLayer(text_dim, text_dim, **attn)
        self.q2_self = AttentionLayer(text_dim, text_dim, **attn)
        self.q1_text = CrossAttentionMLP(text_dim, text_dim, mlp_dim=mlp_dim, **attn)
        self.q2_text = CrossAttentionMLP(text_dim, text_dim, mlp_dim=mlp_dim, **attn)
        self.q1_from_q2 = CrossAttentionMLP(text_dim, text_dim, mlp_dim=mlp_dim, **attn)
        self.q2_from_q1 = CrossAttentionMLP(text_dim, text_dim, mlp_dim=mlp_dim, **attn)

    def forward(
        self, q1: Tensor, q2: Tensor, pe1: Tensor, pe2: Tensor, text: Tensor, text_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Args: q1, q2 B×N×C_t; pe1, pe2 1×N×C_t; text B×L×C_t (no PE); text_mask B×L (True = pad)."""
        q1 = self.q1_self(q1, pe1, q1, pe1)
        q2 = self.q2_self(q2, pe2, q2, pe2)
        q1 = self.q1_text(q1, pe1, text, None, text_mask)
        q2 = self.q2_text(q2, pe2, text, None, text_mask)
        q1 = self.q1_from_q2(q1, pe1, q2, pe2)
        q2 = self.q2_from_q1(q2, pe2, q1, pe1)
        return q1, q2


class TextQueryLayer(nn.Module):
    """Stage 0 of the ``first_order`` ablation: one query set refines itself and reads the sentence.

    The Q1 branch of :class:`DecompositionLayer` without the exchange with a second set (one layer).
    """

    def __init__(self, text_dim: int, *, internal_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        attn = dict(internal_dim=internal_dim, num_heads=num_heads)
        self.query_self = AttentionLayer(text_dim, text_dim, **attn)
        self.query_text = CrossAttentionMLP(text_dim, text_dim, mlp_dim=mlp_dim, **attn)

    def forward(self, query: Tensor, query_pe: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        """Args: query B×N×C_t; query_pe 1×N×C_t; text B×L×C_t (no PE); text_mask B×L (True = pad)."""
        query = self.query_self(query, query_pe, query, query_pe)
        return self.query_text(query, query_pe, text, None, text_mask)


class ActivationLayer(nn.Module):
    """Stage 1: a query set refines itself, then every image token reads it (one layer)."""

    def __init__(
        self, vision_dim: int, text_dim: int, *, internal_dim: int, num_heads: int, mlp_dim: int
    ) -> None:
        super().__init__()
        attn = dict(internal_dim=internal_dim, num_heads=num_heads)
        self.query_self = AttentionLayer(text_dim, text_dim, **attn)
        self.image_from_query = CrossAttentionMLP(vision_dim, text_dim, mlp_dim=mlp_dim, **attn)

    def forward(
        self, image: Tensor, image_pe: Tensor, query: Tensor, query_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Args: image B×g²×C_v, image_pe 1×g²×C_v, query B×N×C_t, query_pe 1×N×C_t."""
        query = self.query_self(query, query_pe, query, query_pe)
        image = self.image_from_query(image, image_pe, query, query_pe)
        return image, query


class PromptLayer(nn.Module):
    """Stage 2: Q2 re-activates the image tokens; SAM's prompt tokens read Q2 and the image (one layer).

    Either half can be left out, and is then not built: ``reactivate=False`` (the ``first_order``
    ablation) lets the prompts read the query set and the image tokens as they arrive;
    ``with_prompts=False`` (the ``no_sparse`` ablation) keeps only the re-activation, since nothing
    would read the prompt tokens.
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        prompt_dim: int,
        *,
        internal_dim: int,
        num_heads: int,
        mlp_dim: int,
        reactivate: bool = True,
        with_prompts: bool = True,
    ) -> None:
        super().__init__()
        if not (reactivate or with_prompts):
            raise ValueError("PromptLayer needs at least one of reactivate / with_prompts")
        attn = dict(internal_dim=internal_dim, num_heads=num_heads)
        self.activation = (
            ActivationLayer(vision_dim, text_dim, mlp_dim=mlp_dim, **attn) if reactivate else None
        )
        self.prompt_self = self.prompt_from_query = self.prompt_from_image = None
        if with_prompts:
            self.prompt_self = AttentionLayer(prompt_dim, prompt_dim, **attn)
            self.prompt_from_query = CrossAttentionMLP(prompt_dim, text_dim, mlp_dim=mlp_dim, **attn)
            self.prompt_from_image = CrossAttentionMLP(prompt_dim, vision_dim, mlp_dim=mlp_dim, **attn)

    def forward(
        self,
        image: Tensor,
        image_pe: Tensor,
        query: Tensor,
        query_pe: Tensor,
        prompt: Tensor | None,
        prompt_pe: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Args as :class:`ActivationLayer` plus prompt B×P×d and prompt_pe 1×P×d (None without prompts)."""
        if self.activation is not None:
            image, query = self.activation(image, image_pe, query, query_pe)
        if self.prompt_self is not None:
            prompt = self.prompt_self(prompt, prompt_pe, prompt, prompt_pe)
            prompt = self.prompt_from_query(prompt, prompt_pe, query, query_pe)
            prompt = self.prompt_from_image(prompt, prompt_pe, image, image_pe)
        return image, query, prompt


class CascadedPrompter(nn.Module):
    """Cascaded second-order prompter: decomposition → first-order → second-order activation.

    With ``second_order=False`` it is the ``first_order`` ablation (docs/method.md §3): no decomposition
    and no re-activation. Stage 0 keeps one query set Q, pooled from T and refined by ``depths[0]``
    :class:`TextQueryLayer` s (self-attention, then cross-attention to T +MLP: the Q1 branch of the
    decomposition without the Q1↔Q2 exchange), so Q reads the sentence as deeply as Q1 does.
    Stage 1 is unchanged (Q activates the image tokens, giving V1). Stage 2 keeps only the prompt
    half of ``depths[2]`` :class:`PromptLayer` s: the prompt tokens self-attend, read Q (as Stage 1
    left it) and read V1; the heads are unchanged (the dense head sees V1). Query set 2, its PE and
    the re-activation layers are not built.

    Args:
        vision_dim: C_v, width of CLIP's patch tokens.
        text_dim: C_t, width of CLIP's text tokens.
        embed_dim: width of CLIP's pooled sentence embedding (the dense head's cosine space).
        grid_size: g, side of CLIP's patch grid the image PE is sized for (interpolated if it changes).
        prompt_dim: d, SAM's prompt width.
        mask_size: side of SAM's mask-prompt input (4 × SAM's embedding grid).
        num_queries: tokens per Stage-0 query set (3 in the paper).
        num_prompts: sparse prompt tokens (9 in the paper).
        depths: layers of stages 0, 1 and 2. Stage 2 is empty, whatever ``depths[2]``, when it has
            nothing to do (``second_order=False`` and ``use_sparse=False``).
        internal_dim: attention projection width (512 in the paper).
        num_heads: attention heads (8 in the paper).
        mlp_dim: hidden width of every MLP (512 in the paper).
        pe_init_std: std of the learnable PEs and prompt tokens (1.0 = the release's N(0,1)).
        second_order: the paper's cascade. False = the ``first_order`` ablation (above).
        use_sparse: emit sparse prompts. False = the ``no_sparse`` ablation; the prompt tokens and
            every layer that only feeds them are not built.
        use_dense: emit the dense prompt. False = the ``no_dense`` ablation; the dense head is not built.
        text_padding_mask: mask padded text tokens in attention and pooling. False reproduces the
            release (flaw 1: pads attended, so predictions depend on the batch's longest sentence).

    Attributes (the :class:`~rsrefseg.models.prompter.base.Prompter` declarations):
        dense_head: the dense head, None under ``use_dense=False``.
        emits_queries: always True (the first-order ablation returns its single set Q as q2).
        uses_sentence: ``use_dense``: the pooled sentence and CLIP's logit scale / bias feed only
            the dense head.
    """

    emits_queries = True

    def __init__(
        self,
        *,
        vision_dim: int,
        text_dim: int,
        embed_dim: int,
        grid_size: int,
        prompt_dim: int,
        mask_size: int,
        num_queries: int = 3,
        num_prompts: int = 9,
        depths: tuple[int, int, int] = (2, 2, 2),
        internal_dim: int = 512,
        num_heads: int = 8,
        mlp_dim: int = 512,
        pe_init_std: float = 1.0,
        second_order: bool = True,
        use_sparse: bool = True,
        use_dense: bool = True,
        text_padding_mask: bool = True,
    ) -> None:
        super().__init__()
        if not (use_sparse or use_dense):
            raise ValueError("CascadedPrompter needs at least one of use_sparse / use_dense")
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"depths must be three positive layer counts (stages 0, 1, 2), got {depths}")
        self.num_queries = num_queries
        self.grid_size = grid_size
        self.is_second_order = second_order
        self.use_sparse, self.use_dense, self.text_padding_mask = use_sparse, use_dense, text_padding_mask
        self.uses_sentence = use_dense
        widths = dict(internal_dim=internal_dim, num_heads=num_heads, mlp_dim=mlp_dim)

        # Drawn in the order the paper's model has always used, so its seeded runs stay reproducible.
        def randn(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * pe_init_std)

        self.query_pe1 = randn(num_queries, text_dim)
        self.query_pe2 = randn(num_queries, text_dim) if second_order else None
        self.image_pe = randn(vision_dim, grid_size, grid_size)
        self.prompt_tokens = randn(num_prompts, prompt_dim) if use_sparse else None
        self.prompt_pe = randn(num_prompts, prompt_dim) if use_sparse else None

        # Exactly one of each pair below is built: stage 0 and stage 2 of the cascade, or of the
        # first-order ablation.
        self.decomposition = self.query_extraction = None
        self.second_order = self.prompt_layers = None
        if second_order:
            self.decomposition = nn.ModuleList(
                DecompositionLayer(text_dim, **widths) for _ in range(depths[0])
            )
        else:
            self.query_extraction = nn.ModuleList(
                TextQueryLayer(text_dim, **widths) for _ in range(depths[0])
            )
        self.first_order = nn.ModuleList(
            ActivationLayer(vision_dim, text_dim, **widths) for _ in range(depths[1])
        )
        if second_order:
            self.second_order = nn.ModuleList(
                PromptLayer(vision_dim, text_dim, prompt_dim, with_prompts=use_sparse, **widths)
                for _ in range(depths[2])
            )
        else:
            self.prompt_layers = nn.ModuleList(
                PromptLayer(vision_dim, text_dim, prompt_dim, reactivate=False, **widths)
                for _ in range(depths[2] if use_sparse else 0)
            )
        self.sparse_head = MLP(prompt_dim, hidden_dim=mlp_dim) if use_sparse else None
        self.dense_head: DensePromptHead | None = (
            DensePromptHead(vision_dim=vision_dim, embed_dim=embed_dim, mask_size=mask_size)
            if use_dense
            else None
        )

    def _image_pe(self, grid_size: int) -> Tensor:
        """1×g²×C_v image PE, bicubically resized when the runtime grid differs from the configured one."""
        return resize_grid_pe(self.image_pe, grid_size).flatten(2).transpose(1, 2)

    def forward(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        text_padding_mask: Tensor | None,
        sentence: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
    ) -> PrompterOutput:
        """Args:
            image_tokens: V0, B×g²×C_v CLIP patch tokens (row-major square grid).
            text_tokens: T, B×L×C_t CLIP text tokens.
            text_padding_mask: B×L bool, True at padding (valid tokens are a prefix), or None.
            sentence: t, B×E pooled sentence embedding.
            logit_scale, logit_bias: CLIP's scalar logit scale (log) and bias.

        Returns:
            :class:`PrompterOutput` with sparse B×P×d (None without sparse prompts), dense B×1×M×M
            (None without the dense prompt), q1 and q2 the Stage-0 sets B×N×C_t; the first-order
            ablation returns q1 None and its single set Q as q2.
        """
        b, n, _ = image_tokens.shape
        grid_size = round(n**0.5)
        if grid_size * grid_size != n:
            raise ValueError(f"image_tokens must form a square grid, got {n} tokens")
        mask = text_padding_mask if self.text_padding_mask else None

        pooled = masked_adaptive_avg_pool(text_tokens, mask, self.num_queries)
        pe1 = self.query_pe1[None]
        if self.is_second_order:
            q1 = q2 = pooled
            pe2 = self.query_pe2[None]
            for layer in self.decomposition:
                q1, q2 = layer(q1, q2, pe1, pe2, text_tokens, mask)
        else:
            # the single query set Q travels as q1 with PE1
            q1 = pooled
            for layer in self.query_extraction:
                q1 = layer(q1, pe1, text_tokens, mask)

        image, image_pe = image_tokens, self._image_pe(grid_size)
        query = q1
        for layer in self.first_order:
            image, query = layer(image, image_pe, query, pe1)

        prompt = prompt_pe = None
        if self.prompt_tokens is not None:
            prompt = self.prompt_tokens[None].expand(b, -1, -1)
            prompt_pe = self.prompt_pe[None]
        if self.is_second_order:
            layers, query, query_pe = self.second_order, q2, pe2
        else:
            layers, query_pe = self.prompt_layers, pe1  # the prompts read Q as Stage 1 left it
        for layer in layers:
            image, query, prompt = layer(image, image_pe, query, query_pe, prompt, prompt_pe)

        sparse = self.sparse_head(prompt) if self.sparse_head is not None else None
        dense = (
            self.dense_head(image, grid_size, sentence, logit_scale, logit_bias)
            if self.dense_head is not None
            else None
        )
        if self.is_second_order:
            return PrompterOutput(sparse=sparse, dense=dense, q1=q1, q2=q2)
        # No pair to push apart (L_orth is skipped). Q plays Q2's part in L_ctr: it is the query set
        # that activates the image, so aligning it with the referred region's CLIP features is the
        # same objective the cascade gives Q2.
        return PrompterOutput(sparse=sparse, dense=dense, q1=None, q2=q1)
