"""The cascaded second-order prompter of RSRefSeg 2 (METHOD.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsrefseg.models.blocks import MLP, AttentionLayer, CrossAttentionMLP, masked_adaptive_avg_pool
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
    """Stage 2: Q2 re-activates the image tokens; SAM's prompt tokens read Q2 and the image (one layer)."""

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        prompt_dim: int,
        *,
        internal_dim: int,
        num_heads: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        attn = dict(internal_dim=internal_dim, num_heads=num_heads)
        self.activation = ActivationLayer(vision_dim, text_dim, mlp_dim=mlp_dim, **attn)
        self.prompt_self = AttentionLayer(prompt_dim, prompt_dim, **attn)
        self.prompt_from_query = CrossAttentionMLP(prompt_dim, text_dim, mlp_dim=mlp_dim, **attn)
        self.prompt_from_image = CrossAttentionMLP(prompt_dim, vision_dim, mlp_dim=mlp_dim, **attn)

    def forward(
        self,
        image: Tensor,
        image_pe: Tensor,
        query: Tensor,
        query_pe: Tensor,
        prompt: Tensor,
        prompt_pe: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Args as :class:`ActivationLayer` plus prompt B×P×d and prompt_pe 1×P×d."""
        image, query = self.activation(image, image_pe, query, query_pe)
        prompt = self.prompt_self(prompt, prompt_pe, prompt, prompt_pe)
        prompt = self.prompt_from_query(prompt, prompt_pe, query, query_pe)
        prompt = self.prompt_from_image(prompt, prompt_pe, image, image_pe)
        return image, query, prompt


class CascadedPrompter(nn.Module):
    """Cascaded second-order prompter: decomposition → first-order → second-order activation.

    Args:
        vision_dim: C_v, width of CLIP's patch tokens.
        text_dim: C_t, width of CLIP's text tokens.
        embed_dim: width of CLIP's pooled sentence embedding (the dense head's cosine space).
        grid_size: g, side of CLIP's patch grid the image PE is sized for (interpolated if it changes).
        prompt_dim: d, SAM's prompt width.
        mask_size: side of SAM's mask-prompt input (4 × SAM's embedding grid).
        num_queries: tokens per Stage-0 query set (3 in the paper).
        num_prompts: sparse prompt tokens (9 in the paper).
        depths: layers of stages 0, 1 and 2.
        internal_dim: attention projection width (512 in the paper).
        num_heads: attention heads (8 in the paper).
        mlp_dim: hidden width of every MLP (512 in the paper).
        pe_init_std: std of the learnable PEs and prompt tokens (1.0 = the release's N(0,1)).
        use_sparse: emit sparse prompts (False = the ``no_sparse`` ablation).
        use_dense: emit the dense prompt (False = the ``no_dense`` ablation).
        text_padding_mask: mask padded text tokens in attention and pooling. False reproduces the
            release (flaw 1: pads attended, so predictions depend on the batch's longest sentence).
    """

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
        self.use_sparse, self.use_dense, self.text_padding_mask = use_sparse, use_dense, text_padding_mask
        widths = dict(internal_dim=internal_dim, num_heads=num_heads, mlp_dim=mlp_dim)

        self.query_pe1 = nn.Parameter(torch.randn(num_queries, text_dim) * pe_init_std)
        self.query_pe2 = nn.Parameter(torch.randn(num_queries, text_dim) * pe_init_std)
        self.image_pe = nn.Parameter(torch.randn(vision_dim, grid_size, grid_size) * pe_init_std)
        self.prompt_tokens = nn.Parameter(torch.randn(num_prompts, prompt_dim) * pe_init_std)
        self.prompt_pe = nn.Parameter(torch.randn(num_prompts, prompt_dim) * pe_init_std)

        self.decomposition = nn.ModuleList(DecompositionLayer(text_dim, **widths) for _ in range(depths[0]))
        self.first_order = nn.ModuleList(
            ActivationLayer(vision_dim, text_dim, **widths) for _ in range(depths[1])
        )
        self.second_order = nn.ModuleList(
            PromptLayer(vision_dim, text_dim, prompt_dim, **widths) for _ in range(depths[2])
        )
        self.sparse_head = MLP(prompt_dim, hidden_dim=mlp_dim) if use_sparse else None
        self.dense_head = (
            DensePromptHead(vision_dim=vision_dim, embed_dim=embed_dim, mask_size=mask_size)
            if use_dense
            else None
        )

    def _image_pe(self, grid_size: int) -> Tensor:
        """1×g²×C_v image PE, bicubically resized when the runtime grid differs from the configured one."""
        pe = self.image_pe[None]
        if grid_size != self.grid_size:
            pe = F.interpolate(pe, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
        return pe.flatten(2).transpose(1, 2)

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
            :class:`PrompterOutput` with sparse B×P×d, dense B×1×M×M, q1 and q2 B×N×C_t.
        """
        b, n, _ = image_tokens.shape
        grid_size = round(n**0.5)
        if grid_size * grid_size != n:
            raise ValueError(f"image_tokens must form a square grid, got {n} tokens")
        mask = text_padding_mask if self.text_padding_mask else None

        q1 = masked_adaptive_avg_pool(text_tokens, mask, self.num_queries)
        q2 = q1
        pe1, pe2 = self.query_pe1[None], self.query_pe2[None]
        for layer in self.decomposition:
            q1, q2 = layer(q1, q2, pe1, pe2, text_tokens, mask)

        image, image_pe = image_tokens, self._image_pe(grid_size)
        query = q1
        for layer in self.first_order:
            image, query = layer(image, image_pe, query, pe1)

        prompt = self.prompt_tokens[None].expand(b, -1, -1)
        prompt_pe = self.prompt_pe[None]
        query = q2
        for layer in self.second_order:
            image, query, prompt = layer(image, image_pe, query, pe2, prompt, prompt_pe)

        sparse = self.sparse_head(prompt) if self.sparse_head is not None else None
        dense = (
            self.dense_head(image, grid_size, sentence, logit_scale, logit_bias)
            if self.dense_head is not None
            else None
        )
        return PrompterOutput(sparse=sparse, dense=dense, q1=q1, q2=q2)
