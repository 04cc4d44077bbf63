"""RSRefSeg v1's parameter-light prompter: CLIP similarity maps gate the patches (``activation_v1``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsrefseg.models.blocks import resize_grid_pe
from rsrefseg.models.prompter.base import PrompterOutput


def _conv_norm_act(in_dim: int, out_dim: int, *, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2),
        nn.BatchNorm2d(out_dim),
        nn.GELU(),
    )


class ActivationDensePrompt(nn.Module):
    """v1's dense prompt: the global activation logits, bilinearly upsampled to SAM's mask input.

    Parameter-free. The prompter's declared ``dense_head`` (prompter.base.Prompter), so the network
    checks ``mask_size`` against SAM and SAM keeps its mask branch trainable, as for the cascaded
    prompter's head.
    """

    def __init__(self, *, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size

    def forward(self, logits: Tensor) -> Tensor:
        """B×1×g×g logits → B×1×M×M."""
        size = (self.mask_size, self.mask_size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ActivationV1Prompter(nn.Module):
    """RSRefSeg v1's prompter: similarity maps between CLIP patches and text gate the patches.

    Per patch v (B×g²×C_v):
      local = mean over the valid text tokens T_l of sigmoid(exp(s)·cos(A_t v, T_l) + b)
      global logit = exp(s)·cos(A_e v, t) + b,  global = sigmoid(global logit)
    with s, b CLIP's own logit scale and bias (b = 0 for OpenAI-style CLIP).
    [local·v, global·v, v] → Conv1×1(3C_v→d)+BN+GELU → + learnable PE → k × (Conv3×3 stride 2 +BN
    +GELU) → adaptive average pool to ``sparse_grid``² → Conv1×1(d→d) → sparse_grid² sparse tokens.
    The dense prompt is the global logit map upsampled to M×M.

    Patches, text tokens and the sentence embedding t live in different widths in general
    (C_v, C_t, E; ViT-B/16: 768, 512, 512), and CLIP only aligns its pooled outputs, so the patches
    are mapped to C_t (A_t) and to E (A_e) by learnable linears. When a width already matches (SigLIP:
    1152 everywhere) the map is the identity and the raw tokens are compared, as in v1.
    k, the number of stride-2 convs, is how often g can be halved (rounding up) while the map stays
    at least ``sparse_grid`` wide; the pool then absorbs the remainder (v1's 27×27 SigLIP grid:
    27→14→7, pool a no-op; a 32×32 grid: 32→16→8, pooled to 7). The PE stands in for the SAM
    positional encoding v1 adds at this point, since the prompter does not see SAM.
    v1 feeds (v + local·v)/2 rather than local·v; next to the raw v channels that is the same 1×1
    conv, reparametrised. There are no Stage-0 queries: q1 = q2 = None (no orthogonality or
    contrastive term).

    Args:
        vision_dim: C_v, width of CLIP's patch tokens.
        text_dim: C_t, width of CLIP's text tokens.
        embed_dim: E, width of CLIP's pooled sentence embedding t.
        grid_size: g, side of CLIP's patch grid (sets the number of stride-2 convs and the PE size).
        prompt_dim: d, SAM's prompt width.
        mask_size: side of SAM's mask-prompt input (4 × SAM's embedding grid).
        sparse_grid: side of the sparse-token map; sparse_grid² tokens (7 → 49 in v1).
        pe_init_std: std of the learnable PE.
        text_padding_mask: average the local activation over valid tokens only. False reproduces
            v1, which averages over the batch's padding too (docs/deviations.md §1, §3).
    """

    # the Prompter declarations (prompter.base.Prompter): no Stage-0 queries (q1 = q2 = None); the
    # sentence embedding and CLIP's logit scale / bias gate the sparse tokens too
    emits_queries = False
    uses_sentence = True

    def __init__(
        self,
        *,
        vision_dim: int,
        text_dim: int,
        embed_dim: int,
        grid_size: int,
        prompt_dim: int,
        mask_size: int,
        sparse_grid: int = 7,
        pe_init_std: float = 1.0,
        text_padding_mask: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= sparse_grid <= grid_size:
            raise ValueError(f"sparse_grid must lie in [1, grid_size={grid_size}], got {sparse_grid}")
        self.grid_size, self.sparse_grid, self.text_padding_mask = grid_size, sparse_grid, text_padding_mask
        self.patch_to_text = nn.Linear(vision_dim, text_dim) if vision_dim != text_dim else nn.Identity()
        self.patch_to_embed = nn.Linear(vision_dim, embed_dim) if vision_dim != embed_dim else nn.Identity()
        self.reduce = _conv_norm_act(3 * vision_dim, prompt_dim, kernel_size=1, stride=1)
        self.image_pe = nn.Parameter(torch.randn(prompt_dim, grid_size, grid_size) * pe_init_std)
        num_downsamples, side = 0, grid_size
        while (side + 1) // 2 >= sparse_grid and side > 1:
            num_downsamples, side = num_downsamples + 1, (side + 1) // 2
        self.downsample = nn.Sequential(
            *(_conv_norm_act(prompt_dim, prompt_dim, kernel_size=3, stride=2) for _ in range(num_downsamples))
        )
        # the convs end in GELU; SAM's sparse embeddings need both signs and a free scale
        self.sparse_proj = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=1)
        self.dense_head = ActivationDensePrompt(mask_size=mask_size)

    def _image_pe(self, grid_size: int) -> Tensor:
        """1×d×g×g PE, bicubically resized when the runtime grid differs from the configured one."""
        return resize_grid_pe(self.image_pe, grid_size)

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
            text_padding_mask: B×L bool, True at padding (every row keeps a valid token), or None.
            sentence: t, B×E pooled sentence embedding.
            logit_scale, logit_bias: CLIP's scalar logit scale (log) and bias.

        Returns:
            :class:`PrompterOutput` with sparse B×sparse_grid²×d, dense B×1×M×M, q1 = q2 = None.
        """
        b, n, c = image_tokens.shape
        grid_size = round(n**0.5)
        if grid_size * grid_size != n:
            raise ValueError(f"image_tokens must form a square grid, got {n} tokens")
        scale = logit_scale.exp()

        patches = F.normalize(self.patch_to_text(image_tokens), dim=-1)
        local = torch.sigmoid(scale * patches @ F.normalize(text_tokens, dim=-1).transpose(1, 2) + logit_bias)
        if self.text_padding_mask and text_padding_mask is not None:
            valid = (~text_padding_mask).to(local.dtype)[:, None, :]  # B×1×L
            local = (local * valid).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1)
        else:
            local = local.mean(dim=-1)  # B×g²

        patches = F.normalize(self.patch_to_embed(image_tokens), dim=-1)
        global_logits = scale * (patches @ F.normalize(sentence, dim=-1)[:, :, None])[..., 0] + logit_bias

        gated = torch.cat(
            [
                image_tokens * local[..., None],
                image_tokens * torch.sigmoid(global_logits)[..., None],
                image_tokens,
            ],
            dim=-1,
        )
        x = gated.transpose(1, 2).reshape(b, 3 * c, grid_size, grid_size)
        x = self.downsample(self.reduce(x) + self._image_pe(grid_size))
        x = self.sparse_proj(F.adaptive_avg_pool2d(x, self.sparse_grid))
        sparse = x.flatten(2).transpose(1, 2)
        dense = self.dense_head(global_logits.reshape(b, 1, grid_size, grid_size))
        return PrompterOutput(sparse=sparse, dense=dense)
