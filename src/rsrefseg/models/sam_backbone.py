"""SAM as the fine segmenter: image encoder, prompt encoder and a one-prompt-set-per-image decoder."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor, nn

from rsrefseg.models.activation_checkpointing import recompute_in_backward
from rsrefseg.models.checkpoints import load_state_dict_strict, mark_pretrained, read_sam_checkpoint
from rsrefseg.models.contracts import check_dimensions, resize_square
from rsrefseg.models.finetune import LoraSettings, inject_lora
from rsrefseg.models.fused_attention import use_fused_attention


def build_sam_vit(
    *,
    image_size: int,
    patch_size: int,
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: tuple[int, ...],
    window_size: int,
    prompt_dim: int,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    checkpoint: str | None = None,
) -> Sam:
    """Build a segment-anything ``Sam`` of any size (Meta's vit_b/l/h are values of these arguments).

    Args:
        checkpoint: a Meta-format state dict file (``sam_vit_b_01ec64.pth``) loaded strictly, or None.
    """
    embedding_size = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=encoder_embed_dim,
            depth=encoder_depth,
            num_heads=encoder_num_heads,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            window_size=window_size,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )
    if checkpoint is not None:
        path, state = read_sam_checkpoint(checkpoint, model="SAM")
        load_state_dict_strict(sam, state, source=f"{path} (model.sam.sam.checkpoint)")
        # SamBackbone keeps these parts: our checkpoints may then omit their frozen weights
        for part in (sam.image_encoder, sam.prompt_encoder, sam.mask_decoder):
            mark_pretrained(part, path)
    return sam


class SamBackbone(nn.Module):
    """SAM's three parts behind a batched interface: image i is decoded with prompt set i only.

    segment-anything's ``MaskDecoder.predict_masks`` repeats each image embedding once per prompt
    set (one image, many prompts); with B images and B prompt sets that pairs wrongly, so the
    decoding here is our own and keeps one prompt set per image. Only the first mask token is
    decoded (single-mask output); the multimask hypernetworks and the IoU head get no gradient in
    this method, so :meth:`freeze_unused` freezes them and DDP needs no unused-parameter search.

    Args:
        sam: a segment-anything ``Sam``.
        prompt_dim: d, SAM's prompt width (checked against the model).
        image_size: SAM's input side (checked).
        mask_size: side of the mask prompt and of the output logits, 4 × the embedding grid (checked).
        lora_targets: regular expressions over module names inside the image encoder that get LoRA
            in ``finetune=lora`` (docs/method.md §6: attention qkv / proj and the neck convs).
        fused_attention: compute the image encoder's and the mask decoder's attention with
            ``F.scaled_dot_product_attention`` (:mod:`rsrefseg.models.fused_attention`) instead of
            segment-anything's step-by-step reference. Same parameters and state-dict keys; equal
            up to floating-point rounding (not bit-identical), hence off by default.
    """

    def __init__(
        self,
        *,
        sam: Sam,
        prompt_dim: int,
        image_size: int,
        mask_size: int,
        lora_targets: Sequence[str] = (r"blocks\.\d+\.attn\.(qkv|proj)", r"neck\.(0|2)"),
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = (
            sam.image_encoder,
            sam.prompt_encoder,
            sam.mask_decoder,
        )
        self.register_buffer("pixel_mean", sam.pixel_mean.view(1, 3, 1, 1).clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.view(1, 3, 1, 1).clone(), persistent=False)
        self.prompt_dim, self.image_size, self.mask_size = prompt_dim, image_size, mask_size
        self.lora_targets = tuple(lora_targets)
        actual = {
            "prompt_dim": self.mask_decoder.transformer_dim,
            "image_size": self.image_encoder.img_size,
            "mask_size": self.prompt_encoder.mask_input_size[0],
        }
        stated = dict(prompt_dim=prompt_dim, image_size=image_size, mask_size=mask_size)
        check_dimensions("SamBackbone", stated, actual)
        self.fused_attention = fused_attention
        use_fused_attention(self, fused_attention)

    def freeze_pretrained(self) -> None:
        """Freeze the image encoder; prompt encoder and mask decoder stay trainable (docs/method.md §6)."""
        self.image_encoder.requires_grad_(False)

    def add_lora(self, settings: LoraSettings) -> None:
        """LoRA on the image encoder's ``lora_targets``."""
        inject_lora(self.image_encoder, self.lora_targets, settings, config_key="model.sam.lora_targets")

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the image encoder's ViT blocks in backward instead of storing their activations."""
        recompute_in_backward(self.image_encoder.blocks, enabled)

    def encode_image(self, images: Tensor) -> Tensor:
        """Args: images B×3×H×W in [0, 1]. Returns B×d×h×w image embeddings (h = w = image_size / patch)."""
        images = resize_square(images, self.image_size)
        return self.image_encoder((images * 255.0 - self.pixel_mean) / self.pixel_std)

    def decode(self, image_embeddings: Tensor, sparse: Tensor | None, dense: Tensor | None) -> Tensor:
        """Decode one mask per image from that image's own prompts.

        Args:
            image_embeddings: B×d×h×w.
            sparse: B×P×d sparse prompt embeddings (no point-type embedding is added), or None.
            dense: B×1×M×M mask-prompt logits, or None (SAM's learned "no mask" embedding).

        Returns:
            B×1×M×M mask logits (M = 4h).
        """
        b, d, h, w = image_embeddings.shape
        pe, decoder = self.prompt_encoder, self.mask_decoder
        if dense is None:
            dense_embeddings = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        else:
            dense_embeddings = pe.mask_downscaling(dense)
        if sparse is None:
            sparse = image_embeddings.new_zeros(b, 0, d)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(b, -1, -1), sparse], dim=1)
        image_pe = pe.get_dense_pe().expand(b, -1, -1, -1)
        hs, src = decoder.transformer(image_embeddings + dense_embeddings, image_pe, tokens)
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, d, h, w))
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1])  # mask token 0: the single-mask output
        return (hyper[:, None] @ upscaled.flatten(2)).reshape(b, 1, *upscaled.shape[-2:])

    def freeze_unused(self, *, uses_dense: bool) -> None:
        """Freeze what no loss reaches: multimask and IoU heads, point embeddings, the unused mask branch."""
        decoder, pe = self.mask_decoder, self.prompt_encoder
        # point and box prompts are never given: the prompter's sparse tokens replace them
        unused = [
            decoder.iou_prediction_head,
            *decoder.output_hypernetworks_mlps[1:],
            pe.point_embeddings,
            pe.not_a_point_embed,
        ]
        unused.append(pe.no_mask_embed if uses_dense else pe.mask_downscaling)
        for module in unused:
            module.requires_grad_(False)
