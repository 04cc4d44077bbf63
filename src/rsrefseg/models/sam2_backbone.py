"""SAM 2.1 as the fine segmenter: Hiera + FPN encoder, prompt encoder, a one-prompt-set-per-image decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from rsrefseg.models.activation_checkpointing import recompute_in_backward
from rsrefseg.models.checkpoints import load_state_dict_strict, mark_pretrained, read_sam_checkpoint
from rsrefseg.models.contracts import check_dimensions, resize_square
from rsrefseg.models.finetune import LoraSettings, inject_lora

#: SAM 2 normalises inputs in [0, 1] with ImageNet statistics (sam2.utils.transforms.SAM2Transforms)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: LoRA placement in SAM 2's image encoder (docs/method.md §6): every Hiera block's attention qkv / proj
#: (not ``blocks.N.proj``, the stage-change shortcut) and the FPN neck's lateral 1×1 convs.
HIERA_LORA_TARGETS = (r"trunk\.blocks\.\d+\.attn\.(qkv|proj)", r"neck\.convs\.\d+\.conv")


def _import_sam2() -> Any:
    """Import ``sam2`` without leaving Hydra's global state initialised behind.

    ``sam2/__init__.py`` initialises Hydra's global config module when no Hydra context is active
    (for its own ``build_sam2``); any later ``hydra.initialize*`` in this process would then fail
    with "GlobalHydra is already initialized". Inside a Hydra app the import changes nothing.
    """
    from hydra.core.global_hydra import GlobalHydra

    was_initialized = GlobalHydra.instance().is_initialized()
    try:
        import sam2
    except ImportError as error:
        raise ImportError(
            "model/sam=hiera_* needs Meta's sam2 package: "
            "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 (or `make install`)"
        ) from error

    if not was_initialized and GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    return sam2


def _size_config(config: str, sam2_package: Any) -> Path:
    """A name in sam2's ``configs/sam2.1`` (``sam2.1_hiera_l``) or a path to a YAML of the same form."""
    shipped = Path(sam2_package.__file__).parent / "configs" / "sam2.1"
    path = Path(config).expanduser() if config.endswith((".yaml", ".yml")) else shipped / f"{config}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM 2 size config not found: {path} (config key model.sam.sam.config). "
            f"Shipped with sam2: {sorted(p.stem for p in shipped.glob('*.yaml'))}"
        )
    return path


def build_sam2(
    *,
    config: str,
    image_size: int,
    prompt_dim: int,
    checkpoint: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build SAM 2's full ``SAM2Base`` from a size YAML shipped in the ``sam2`` package.

    The whole model, video-memory modules included, is built so that Meta's checkpoint loads
    strictly; :class:`Sam2Backbone` then keeps only the image path.

    Args:
        config: ``sam2.1_hiera_t`` | ``_s`` | ``_b+`` | ``_l`` (files in sam2's ``configs/sam2.1``) or a
            path to a ``.yaml`` with the same top-level ``model`` node.
        image_size: SAM 2's input side (sets the YAML's ``model.image_size``).
        prompt_dim: d, the FPN neck's width, which SAM 2 also uses as prompt and decoder width.
        checkpoint: Meta's SAM 2.1 file (``{"model": state_dict}`` of the full SAM2Base, e.g.
            ``sam2.1_hiera_large.pt``), loaded strictly; None for random weights.
        overrides: merged into the YAML's ``model`` node before building, e.g. a small trunk or
            ``memory_attention: null`` for a test-size model.
    """
    sam2 = _import_sam2()
    from hydra.utils import instantiate

    node = OmegaConf.load(_size_config(config, sam2)).model
    node = OmegaConf.merge(node, OmegaConf.create(dict(overrides or {})))
    node.image_size = image_size
    node.image_encoder.neck.d_model = prompt_dim
    node.image_encoder.neck.position_encoding.num_pos_feats = prompt_dim
    model = instantiate(node, _recursive_=True)
    if checkpoint is not None:
        path, content = read_sam_checkpoint(checkpoint, model="SAM 2")
        if not isinstance(content, Mapping) or "model" not in content:
            keys = list(content)[:5] if isinstance(content, Mapping) else type(content).__name__
            raise ValueError(
                f"{path} (model.sam.sam.checkpoint) is not a SAM 2 checkpoint: expected Meta's "
                f'{{"model": state_dict}}, found {keys}'
            )
        load_state_dict_strict(model, content["model"], source=path)
        # the parts Sam2Backbone keeps: our checkpoints may then omit their frozen weights
        for part in (model.image_encoder, model.sam_prompt_encoder, model.sam_mask_decoder):
            mark_pretrained(part, path)
    return model


@dataclass
class Sam2Features:
    """SAM 2's image features, as its mask decoder consumes them.

    Attributes:
        embedding: B×d×h×w stride-16 features with ``no_mem_embed`` added (h = w = image_size / 16).
        high_res: (B×d/8×4h×4w, B×d/4×2h×2w), the stride-4 and stride-8 FPN levels after the
            decoder's ``conv_s0`` / ``conv_s1``.
    """

    embedding: Tensor
    high_res: tuple[Tensor, Tensor]

    def select(self, index: Tensor) -> Sam2Features:
        """The features of images ``index`` (B long, repeats allowed)."""
        return Sam2Features(
            embedding=self.embedding[index], high_res=(self.high_res[0][index], self.high_res[1][index])
        )


@dataclass
class Sam2Levels:
    """SAM 2's image-encoder output before anything that trains in ``frozen`` mode touches it.

    ``no_mem_embed`` and the decoder's ``conv_s0`` / ``conv_s1`` turn these into
    :class:`Sam2Features` (:meth:`Sam2Backbone.features`); the convolutions train with the mask
    decoder, so a frozen-feature cache stores these levels, not the decoder's inputs.

    Attributes:
        stride4: B×d×4h×4w, stride8: B×d×2h×2w, stride16: B×d×h×w FPN levels (``backbone_fpn``).
    """

    stride4: Tensor
    stride8: Tensor
    stride16: Tensor

    def select(self, index: Tensor) -> Sam2Levels:
        """The levels of images ``index`` (B long, repeats allowed)."""
        return Sam2Levels(self.stride4[index], self.stride8[index], self.stride16[index])


class Sam2Backbone(nn.Module):
    """SAM 2.1's image path behind :class:`SamBackbone`'s interface: image i is decoded with prompt set i.

    Kept from ``SAM2Base``: the image encoder (Hiera trunk + FPN neck), prompt encoder, mask decoder
    and ``no_mem_embed``, which SAM 2 adds to the lowest-resolution feature of a frame without
    memory (``directly_add_no_mem_embed``). By default it is frozen with the encoder outside ``full``
    mode: a constant channel bias the trained decoder can absorb (``train_no_mem_embed`` trains it,
    as the release does). The video-memory modules are dropped.

    Decoding is single-mask (mask token 0), one prompt set per image (``repeat_image=False``).
    SAM2Base's object-score gating (masks set to −1024 where the object-score logit is ≤ 0) is not
    applied: it is the video tracker's gradient-free switch, and a referring expression always
    names something; the object-score head is frozen as unused.

    Args:
        sam: a ``SAM2Base`` from :func:`build_sam2`.
        prompt_dim: d, SAM 2's prompt width (checked against the model).
        image_size: SAM 2's input side (checked).
        mask_size: side of the mask prompt and of the output logits, image_size / 4 (checked).
        lora_targets: regular expressions over module names inside the image encoder that get LoRA
            in ``finetune=lora``.
        dynamic_multimask_via_stability: False (ours) always returns mask token 0. True reproduces
            the authors' build, which keeps SAM 2's eval-only fallback: in eval mode, when token 0's
            mask is unstable (IoU of logits > 0.05 vs > −0.05 below 0.98), the multimask token with
            the highest predicted IoU is returned instead — tokens the referring loss never trains
            (docs/method.md §5.2, docs/deviations.md §1). Training is unaffected either way.
        train_no_mem_embed: keep ``no_mem_embed`` trainable in ``lora`` / ``frozen`` mode, as the
            release does. False (ours) freezes it with the encoder. ``full`` mode trains it either way.
    """

    def __init__(
        self,
        *,
        sam: nn.Module,
        prompt_dim: int,
        image_size: int,
        mask_size: int,
        lora_targets: Sequence[str] = HIERA_LORA_TARGETS,
        dynamic_multimask_via_stability: bool = False,
        train_no_mem_embed: bool = False,
    ) -> None:
        super().__init__()
        if not (sam.use_high_res_features_in_sam and sam.directly_add_no_mem_embed):
            raise ValueError(
                "Sam2Backbone needs a SAM 2 config with use_high_res_features_in_sam and "
                "directly_add_no_mem_embed true (every SAM 2.1 size config sets both)"
            )
        self.image_encoder, self.prompt_encoder, self.mask_decoder = (
            sam.image_encoder,
            sam.sam_prompt_encoder,
            sam.sam_mask_decoder,
        )
        self.no_mem_embed = sam.no_mem_embed  # 1×1×d
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.prompt_dim, self.image_size, self.mask_size = prompt_dim, image_size, mask_size
        self.lora_targets = tuple(lora_targets)
        self.train_no_mem_embed = train_no_mem_embed
        self.mask_decoder.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        actual = {
            "prompt_dim": self.mask_decoder.transformer_dim,
            "image_size": sam.image_size,
            "mask_size": self.prompt_encoder.mask_input_size[0],
        }
        stated = dict(prompt_dim=prompt_dim, image_size=image_size, mask_size=mask_size)
        check_dimensions("Sam2Backbone", stated, actual)

    def freeze_pretrained(self) -> None:
        """Freeze the image encoder and (unless ``train_no_mem_embed``) ``no_mem_embed``; the prompt
        encoder and mask decoder stay trainable."""
        self.image_encoder.requires_grad_(False)
        self.no_mem_embed.requires_grad_(self.train_no_mem_embed)

    def add_lora(self, settings: LoraSettings) -> None:
        """LoRA on the image encoder's ``lora_targets``."""
        inject_lora(self.image_encoder, self.lora_targets, settings, config_key="model.sam.lora_targets")

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the Hiera trunk's blocks in backward instead of storing their activations
        (Hiera already attends with ``F.scaled_dot_product_attention``)."""
        recompute_in_backward(self.image_encoder.trunk.blocks, enabled)

    def encode_image(self, images: Tensor) -> Sam2Features:
        """Args: images B×3×H×W in [0, 1]. Returns the B×d×h×w embedding and the two finer levels."""
        return self.features(self.encode_levels(images))

    def encode_levels(self, images: Tensor) -> Sam2Levels:
        """The frozen part of :meth:`encode_image`: images B×3×H×W in [0, 1] → the encoder's FPN levels."""
        images = resize_square(images, self.image_size)
        levels = self.image_encoder((images - self.pixel_mean) / self.pixel_std)["backbone_fpn"]
        stride4, stride8, stride16 = levels[-3:]
        return Sam2Levels(stride4=stride4, stride8=stride8, stride16=stride16)

    def features(self, levels: Sam2Levels) -> Sam2Features:
        """The decoder's inputs from the encoder's levels: ``no_mem_embed`` and ``conv_s0`` / ``conv_s1``."""
        return Sam2Features(
            embedding=levels.stride16 + self.no_mem_embed.view(1, -1, 1, 1),
            high_res=(self.mask_decoder.conv_s0(levels.stride4), self.mask_decoder.conv_s1(levels.stride8)),
        )

    def decode(
        self, features: Sam2Features | Sam2Levels, sparse: Tensor | None, dense: Tensor | None
    ) -> Tensor:
        """Decode one mask per image from that image's own prompts.

        Args:
            features: from :meth:`encode_image`, batch B, or :meth:`encode_levels`' levels (cached
                frozen features), finished here by :meth:`features`.
            sparse: B×P×d sparse prompt embeddings (no point-type embedding is added), or None.
            dense: B×1×M×M mask-prompt logits, or None (SAM's learned "no mask" embedding).

        Returns:
            B×1×M×M mask logits (M = 4h).
        """
        if isinstance(features, Sam2Levels):
            features = self.features(features)
        b, d, h, w = features.embedding.shape
        pe = self.prompt_encoder
        if dense is None:
            dense_embeddings = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        else:
            dense_embeddings = pe.mask_downscaling(dense)
        if sparse is None:
            sparse = features.embedding.new_zeros(b, 0, d)
        masks, _, _, _ = self.mask_decoder(
            image_embeddings=features.embedding,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=False,
            repeat_image=False,
            high_res_features=list(features.high_res),
        )
        return masks

    def freeze_unused(self, *, uses_dense: bool) -> None:
        """Freeze what no loss reaches: IoU, object-score and multimask heads, point embeddings,
        the unused mask branch (so DDP needs no unused-parameter search)."""
        decoder, pe = self.mask_decoder, self.prompt_encoder
        unused = [
            decoder.iou_prediction_head,
            *decoder.output_hypernetworks_mlps[1:],
            pe.point_embeddings,
            pe.not_a_point_embed,
            pe.no_mask_embed if uses_dense else pe.mask_downscaling,
        ]
        if decoder.pred_obj_scores:
            unused.append(decoder.pred_obj_score_head)
        for module in unused:
            module.requires_grad_(False)
