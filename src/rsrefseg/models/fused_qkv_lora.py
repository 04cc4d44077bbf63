"""LoRA with one rank-r adapter per projection on a fused q/k/v weight (``model.lora.split_qkv``).

timm's ViT attention (SigLIP's image tower) computes q, k and v with one ``qkv`` Linear, and
``nn.MultiheadAttention`` (open_clip's text towers) with one ``in_proj_weight``: the stacked
[W_q; W_k; W_v], 3C×C. peft puts a single rank-r adapter on such a fused weight. The authors' release
adapts q, k and v as separate projections, each with its own rank-r adapter. On the fused weight
that is

    ΔW = scale · [B_q A_q; B_k A_k; B_v A_v]   (A_i r×C, B_i C×r, scale = alpha / r)

— three independent low-rank updates on the three row blocks, rank ≤ 3r in all, with 3·r·(C + C)
parameters instead of r·(C + 3C). The wrappers here hold the base module unchanged under
``base_layer`` (frozen, as peft's do) and fold into it with :func:`merge_split_qkv`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


class BlockLowRankUpdate(nn.Module):
    """``blocks`` independent rank-r updates, one per equal row block of an out×in weight.

    Block i is ``scale · B_i A_i`` with A_i r×in (Kaiming-uniform, as peft initialises ``lora_A``)
    and B_i (out/blocks)×r (zeros), so training starts from the base weight.

    Args:
        in_dim, out_dim: the adapted weight's shape is out_dim×in_dim.
        blocks: number of row blocks (3 for a fused q/k/v weight, 1 for plain LoRA).
        r: rank of each block's update; alpha: scaling numerator.
        dropout: dropout on the adapter's input (the activation path only).
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, blocks: int, r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if out_dim % blocks:
            raise ValueError(f"a {out_dim}×{in_dim} weight does not split into {blocks} equal row blocks")
        self.lora_A = nn.Parameter(torch.empty(blocks, r, in_dim))
        self.lora_B = nn.Parameter(torch.zeros(blocks, out_dim // blocks, r))
        for block in self.lora_A.data:
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        """The out_dim×in_dim update: the blocks' ``scale · B_i A_i`` stacked row-wise."""
        return self.scale * (self.lora_B @ self.lora_A).flatten(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x …×in_dim. Returns the update's output …×out_dim (x @ ΔWᵀ, with dropout on x)."""
        low = torch.einsum("...i,kri->...kr", self.dropout(x), self.lora_A)
        return self.scale * torch.einsum("...kr,kor->...ko", low, self.lora_B).flatten(-2)


class SplitQkvLinear(nn.Module):
    """A fused q/k/v ``nn.Linear`` (out = 3·in rows [q; k; v]) with one rank-r adapter per projection.

    Args:
        base_layer: the fused Linear; frozen here.
        r, alpha, dropout: the LoRA settings of each projection's adapter.
    """

    def __init__(self, base_layer: nn.Linear, *, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.lora = BlockLowRankUpdate(
            base_layer.in_features, base_layer.out_features, blocks=3, r=r, alpha=alpha, dropout=dropout
        ).to(base_layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x …×C. Returns …×3C: the base projection plus each slice's own update."""
        return self.base_layer(x) + self.lora(x).to(x.dtype)

    def merged(self) -> nn.Linear:
        """The base Linear with every update folded into its weight (the wrapper is then unused)."""
        with torch.no_grad():
            self.base_layer.weight += self.lora.delta_weight().to(self.base_layer.weight)
        return self.base_layer


class SplitQkvMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with one rank-r adapter on each of q, k, v and one on the output.

    PyTorch's attention reads ``in_proj_weight`` and ``out_proj.weight`` as tensors (no sub-module
    ``forward`` to hook), so the updated weights are formed for each call and the base module runs
    with them substituted (``torch.func.functional_call``); gradients reach only the adapters.

    Args:
        base_layer: the attention, with q, k, v of the same width (``_qkv_same_embed_dim``); frozen.
        r, alpha: the LoRA settings of each adapter.
        dropout: must be 0: an update folded into the weight has no input to drop.
    """

    def __init__(
        self, base_layer: nn.MultiheadAttention, *, r: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not base_layer._qkv_same_embed_dim:
            raise ValueError("split_qkv LoRA needs nn.MultiheadAttention with q, k, v of the same width")
        if dropout:
            raise ValueError(
                f"model.lora.dropout={dropout}: split_qkv LoRA on nn.MultiheadAttention folds the "
                "update into the weight, which leaves no input to drop; use dropout 0 (the paper's)"
            )
        width = base_layer.embed_dim
        self.base_layer = base_layer.requires_grad_(False)
        weight = base_layer.in_proj_weight
        self.qkv_lora = BlockLowRankUpdate(width, 3 * width, blocks=3, r=r, alpha=alpha).to(weight)
        self.out_lora = BlockLowRankUpdate(width, width, blocks=1, r=r, alpha=alpha).to(weight)

    @property
    def batch_first(self) -> bool:
        return self.base_layer.batch_first

    def _weights(self) -> dict[str, Tensor]:
        base = self.base_layer
        return {
            "in_proj_weight": base.in_proj_weight + self.qkv_lora.delta_weight(),
            "out_proj.weight": base.out_proj.weight + self.out_lora.delta_weight(),
        }

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.MultiheadAttention.forward``'s arguments and outputs, with the updated weights."""
        return functional_call(self.base_layer, self._weights(), args, kwargs)

    def merged(self) -> nn.MultiheadAttention:
        """The base attention with every update folded into its weights."""
        with torch.no_grad():
            for name, weight in self._weights().items():
                self.base_layer.get_parameter(name).copy_(weight)
        return self.base_layer


def is_fused_qkv(name: str, module: nn.Module) -> bool:
    """Whether ``module`` computes q, k and v with one weight (nn.MultiheadAttention, a Linear named qkv)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return isinstance(module, nn.Linear) and name.rpartition(".")[2] == "qkv"


def split_qkv_adapter(module: nn.Module, *, r: int, alpha: float, dropout: float) -> nn.Module:
    """The split-q/k/v LoRA wrapper of a fused module (see :func:`is_fused_qkv`)."""
    if isinstance(module, nn.MultiheadAttention):
        return SplitQkvMultiheadAttention(module, r=r, alpha=alpha, dropout=dropout)
    return SplitQkvLinear(module, r=r, alpha=alpha, dropout=dropout)


def merge_split_qkv(net: nn.Module) -> int:
    """Fold every split-q/k/v adapter of ``net`` into its base module and unwrap it, in place.

    Returns:
        The number of wrappers merged.
    """
    wrappers = [
        (name, module)
        for name, module in net.named_modules()
        if isinstance(module, SplitQkvLinear | SplitQkvMultiheadAttention)
    ]
    for name, module in wrappers:
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, module.merged())
    return len(wrappers)
