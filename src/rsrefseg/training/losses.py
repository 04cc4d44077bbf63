"""Training losses: 5·BCE + 5·Dice + 0.5·L_orth + 0.5·L_ctr (docs/losses.md §1).

Every term is computed in float32: under bf16 autocast the sums over 1024² pixels and the
InfoNCE logits lose too much precision otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def dice_loss(logits: Tensor, targets: Tensor, *, eps: float = 2e-3, valid: Tensor | None = None) -> Tensor:
    """V-Net Dice loss, 1 − 2Σ(p·y) / (Σp² + Σy² + eps) per sample, averaged over the batch.

    Args:
        logits: Mask logits, B×1×H×W.
        targets: Ground truth in [0, 1], B×1×H×W.
        eps: Smoothing term of the denominator.
        valid: Optional B×1×H×W bool; p and y are zeroed outside it (padding).

    Returns:
        Scalar loss.
    """
    probs = logits.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    if valid is not None:
        keep = valid.flatten(1).to(probs.dtype)
        probs, targets = probs * keep, targets * keep
    numerator = 2 * (probs * targets).sum(dim=1)
    denominator = probs.square().sum(dim=1) + targets.square().sum(dim=1) + eps
    return (1 - numerator / denominator).mean()


def orthogonality_loss(q1: Tensor, q2: Tensor) -> Tensor:
    """Squared cosine between the token means of the two Stage-0 query sets, averaged over the batch.

    Args:
        q1: First query set, B×N×C.
        q2: Second query set, B×N×C.

    Returns:
        Scalar in [0, 1]: 1 for parallel means, 0 for orthogonal ones.
    """
    cos = F.cosine_similarity(q1.float().mean(dim=1), q2.float().mean(dim=1), dim=-1)
    return cos.square().mean()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between mask-pooled CLIP vision tokens and the mean Stage-0 Q2 query.

    v_b = normalise(proj(mean of V0 over the GT cells)) and u_b = normalise(mean of Q2 tokens).
    The GT mask is resized bilinearly to the g×g token grid and thresholded at 0.5. A small
    object can vanish at g×g; such a sample pools the single cell where the bilinear mask peaks
    (or, if bilinear sampling missed the object entirely, where the area-averaged mask peaks), so
    every sample with a non-empty GT pools something. Samples whose GT is empty (no-target
    expressions) have no region to align: they stay in the batch as negatives but contribute no
    loss of their own.

    Under DDP (``torch.distributed`` initialised with world size > 1) v and u are gathered from
    all ranks to serve as negatives; the local shard is put back into the gathered tensors so its
    gradient flows (the copies from other ranks carry none), and each rank's loss covers its own
    rows. Ranks may hold different batch sizes. Without a process group this is plain in-batch
    InfoNCE.

    Args:
        vision_dim: Width C_v of the vision tokens.
        text_dim: Width C_t of the Q2 queries; v is projected by Linear(C_v→C_t) when they differ.
        init_temperature: Initial logit scale (the inverse temperature), 1/0.07 as in CLIP.
        max_temperature: Upper clamp of the logit scale; None leaves it unclamped (the release,
            docs/deviations.md §1).
        align_corners: How the GT is resized to the g×g grid. False (ours) samples each cell at its
            centre, the point the CLIP patch token of that cell is centred on. True reproduces the
            release, which samples cell i at pixel i·(H−1)/(g−1): the outer cells at the border
            pixels, half a cell off their patch's centre, the offset shrinking towards the middle.
    """

    def __init__(
        self,
        *,
        vision_dim: int,
        text_dim: int,
        init_temperature: float = 1 / 0.07,
        max_temperature: float | None = 100.0,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < init_temperature <= (math.inf if max_temperature is None else max_temperature):
            raise ValueError(
                f"need 0 < init_temperature <= max_temperature, got init_temperature={init_temperature}, "
                f"max_temperature={max_temperature}"
            )
        self.vision_dim = vision_dim
        self.text_dim = text_dim
        self.max_temperature = max_temperature
        self.align_corners = align_corners
        self.projection: nn.Module = (
            nn.Identity() if vision_dim == text_dim else nn.Linear(vision_dim, text_dim)
        )
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))

    @property
    def logit_scale(self) -> Tensor:
        """The effective (clamped) inverse temperature, a scalar tensor."""
        scale = self.log_temperature.exp()
        return scale if self.max_temperature is None else scale.clamp(max=self.max_temperature)

    def forward(self, vision_tokens: Tensor, grid_size: int, masks: Tensor, q2: Tensor) -> Tensor:
        """Computes the symmetric InfoNCE loss of the local samples.

        Args:
            vision_tokens: CLIP patch tokens V0, B×g²×C_v in row-major g×g order.
            grid_size: The patch grid side g.
            masks: Ground-truth masks, B×1×H×W float in [0, 1].
            q2: Stage-0 Q2 queries, B×N×C_t.

        Returns:
            Scalar loss, (CE(v→u) + CE(u→v)) / 2 averaged over local samples with a non-empty GT.
        """
        batch, num_tokens, width = vision_tokens.shape
        if num_tokens != grid_size**2 or width != self.vision_dim:
            raise ValueError(
                f"vision_tokens must be B×{grid_size}²×{self.vision_dim}, got {tuple(vision_tokens.shape)}"
            )
        if q2.shape[0] != batch or q2.shape[-1] != self.text_dim:
            raise ValueError(f"q2 must be {batch}×N×{self.text_dim}, got {tuple(q2.shape)}")
        weights, has_target = _pooling_weights(masks, grid_size, align_corners=self.align_corners)
        # Autocast would run the projection and the similarity matmuls in bf16.
        with torch.autocast(device_type=vision_tokens.device.type, enabled=False):
            pooled = (vision_tokens.float() * weights[..., None]).sum(dim=1) / weights.sum(1, keepdim=True)
            v = F.normalize(self.projection(pooled), dim=-1)
            u = F.normalize(q2.float().mean(dim=1), dim=-1)
            return self._info_nce(v, u, has_target)

    def _info_nce(self, v: Tensor, u: Tensor, has_target: Tensor) -> Tensor:
        """Symmetric InfoNCE of local rows v, u (B×C_t, unit norm) against the global batch."""
        batch, offset = v.shape[0], 0
        v_all, u_all = v, u
        if _distributed_world_size() > 1:
            # One collective for both embeddings: concatenate along the channel axis.
            gathered, offset = _gather_with_local_grad(torch.cat([v, u], dim=1))
            v_all, u_all = gathered.split(v.shape[1], dim=1)
        scale = self.logit_scale
        labels = torch.arange(batch, device=v.device) + offset
        loss_v2u = F.cross_entropy(scale * v @ u_all.T, labels, reduction="none")
        loss_u2v = F.cross_entropy(scale * u @ v_all.T, labels, reduction="none")
        per_sample = (loss_v2u + loss_u2v) / 2
        # Multiplying by the mask (rather than indexing) keeps a graph even when every local sample
        # is excluded, so DDP still sees gradients for the temperature and the projection.
        keep = has_target.to(per_sample.dtype)
        return (per_sample * keep).sum() / keep.sum().clamp_min(1)


def _pooling_weights(masks: Tensor, grid_size: int, *, align_corners: bool = False) -> tuple[Tensor, Tensor]:
    """Binary pooling weights over the token grid, B×g² float, and a B bool "GT non-empty" flag."""
    masks = masks.float()
    size = (grid_size, grid_size)
    bilinear = F.interpolate(masks, size=size, mode="bilinear", align_corners=align_corners).flatten(1)
    area = F.adaptive_avg_pool2d(masks, size).flatten(1)
    weights = (bilinear > 0.5).float()
    # Bilinear downsampling samples only a few pixels per cell and can miss a small object, while
    # the area average is non-zero wherever any GT pixel lies, so it decides the fallback then.
    scores = torch.where(bilinear.amax(dim=1, keepdim=True) > 0, bilinear, area)
    fallback = F.one_hot(scores.argmax(dim=1), grid_size**2).float()
    empty = weights.sum(dim=1, keepdim=True) == 0
    return torch.where(empty, fallback, weights), area.amax(dim=1) > 0


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo handles CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_with_local_grad(x: Tensor) -> tuple[Tensor, int]:
    """All-gathers x (B_r×C on rank r) into ΣB_r×C, keeping autograd only on the local rows.

    Ranks may hold different batch sizes (e.g. a short last batch), so sizes are exchanged
    first and shards are padded to the largest one.

    Returns:
        The gathered ΣB_r×C tensor and the index of this rank's first row in it.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = _collective_device()
    size = torch.tensor([x.shape[0]], device=device)
    sizes_t = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x.detach()
    shards = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(shards, padded)
    pieces = [shard[:n].to(x.device) for shard, n in zip(shards, sizes, strict=True)]
    pieces[rank] = x
    return torch.cat(pieces), sum(sizes[:rank])


class ReferringLoss(nn.Module):
    """Weighted sum of BCE, Dice, orthogonality and contrastive terms.

    A term with weight 0 is never computed; a term whose inputs are None (e.g. a prompter variant
    without Stage 0 gives no q1 / q2) is skipped. Skipped terms are absent from the output.

    Args:
        bce_weight: Weight of the pixel-wise BCE with logits.
        dice_weight: Weight of the V-Net Dice loss.
        orth_weight: Weight of the Stage-0 orthogonality loss.
        contrastive_weight: Weight of the contrastive loss; > 0 requires ``contrastive``.
        contrastive: The contrastive loss module (it owns learnable parameters).
    """

    def __init__(
        self,
        *,
        bce_weight: float = 5.0,
        dice_weight: float = 5.0,
        orth_weight: float = 0.5,
        contrastive_weight: float = 0.5,
        contrastive: ContrastiveLoss | None = None,
    ) -> None:
        super().__init__()
        self.weights = {"bce": bce_weight, "dice": dice_weight, "orth": orth_weight}
        self.weights["contrastive"] = contrastive_weight
        negative = {name: w for name, w in self.weights.items() if w < 0}
        if negative:
            raise ValueError(f"loss weights must be non-negative, got {negative}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"at least one loss weight must be positive, got {self.weights}")
        if contrastive_weight > 0 and contrastive is None:
            raise ValueError(
                f"contrastive_weight={contrastive_weight} needs a ContrastiveLoss module; "
                "pass contrastive=... or set contrastive_weight=0"
            )
        self.contrastive = contrastive

    def for_output(self, output: Any, targets: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
        """The terms for a network output (logits, prompts.q1 / q2, vision_tokens, grid_size).

        Args:
            output: an ``RSRefSeg2Output`` (or anything with those attributes).
            targets: B×1×H×W float ground truth.
            valid: optional B×1×H×W bool mask of pixels that count.
        """
        return self(
            logits=output.logits,
            targets=targets,
            q1=output.prompts.q1,
            q2=output.prompts.q2,
            vision_tokens=output.vision_tokens,
            grid_size=output.grid_size,
            valid=valid,
        )

    def forward(
        self,
        *,
        logits: Tensor,
        targets: Tensor,
        q1: Tensor | None,
        q2: Tensor | None,
        vision_tokens: Tensor | None,
        grid_size: int,
        valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Computes every active term.

        Args:
            logits: Mask logits, B×1×h×w; resized bilinearly to the target size first.
            targets: Ground truth, B×1×H×W float in [0, 1].
            q1: Stage-0 Q1 queries, B×N×C_t, or None.
            q2: Stage-0 Q2 queries, B×N×C_t, or None.
            vision_tokens: CLIP patch tokens V0, B×g²×C_v, or None.
            grid_size: The patch grid side g.
            valid: Optional B×1×H×W bool; pixels outside it are ignored by BCE and Dice.

        Returns:
            ``loss`` (the weighted total) and the unweighted active terms among ``bce``, ``dice``,
            ``orth`` and ``contrastive``.
        """
        if logits.ndim != 4 or targets.ndim != 4 or logits.shape[:2] != targets.shape[:2]:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be B×1×·×·"
            )
        if valid is not None and valid.shape != targets.shape:
            raise ValueError(f"valid {tuple(valid.shape)} must match targets {tuple(targets.shape)}")
        logits = logits.float()
        targets = targets.float()
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)

        terms: dict[str, Tensor] = {}
        if self.weights["bce"] > 0:
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            if valid is None:
                terms["bce"] = bce.mean()
            else:
                keep = valid.to(bce.dtype)
                terms["bce"] = (bce * keep).sum() / keep.sum().clamp_min(1)
        if self.weights["dice"] > 0:
            terms["dice"] = dice_loss(logits, targets, valid=valid)
        if self.weights["orth"] > 0 and q1 is not None and q2 is not None:
            terms["orth"] = orthogonality_loss(q1, q2)
        if (
            self.weights["contrastive"] > 0
            and self.contrastive is not None
            and q2 is not None
            and vision_tokens is not None
        ):
            terms["contrastive"] = self.contrastive(vision_tokens, grid_size, targets, q2)
        total = sum((self.weights[name] * value for name, value in terms.items()), logits.new_zeros(()))
        return {"loss": total, **terms}
