"""model.sam.fused_attention: segment-anything's attention via F.scaled_dot_product_attention agrees with
the reference (forward and gradients, LoRA on), keeps every state-dict key; the other backbones
already attend with scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import image_encoder, transformer
from torch.profiler import ProfilerActivity, profile

from conftest import build_tiny_net
from rsrefseg.models import SamBackbone, build_sam_vit
from rsrefseg.models.finetune import LoraSettings
from rsrefseg.models.fused_attention import (
    FusedImageEncoderAttention,
    FusedTwoWayAttention,
    use_fused_attention,
)

#: fp32: the fused kernels only reorder sums; max |fused − reference| / max |reference|
TOLERANCE = 1e-5


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def small_sam(*, fused_attention: bool = False) -> SamBackbone:
    """Windowed blocks whose window does not divide the 10×10 grid (padding) and one global block;
    random relative-position tables (Meta's initialise them to zero, which would hide the bias)."""
    torch.manual_seed(0)
    sam = build_sam_vit(
        image_size=40,
        patch_size=4,
        encoder_embed_dim=32,
        encoder_depth=3,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=4,
        prompt_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=32,
    )
    for block in sam.image_encoder.blocks:
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    backbone = SamBackbone(
        sam=sam, prompt_dim=32, image_size=40, mask_size=40, fused_attention=fused_attention
    )
    backbone.add_lora(LoraSettings(r=4, alpha=8))
    backbone.requires_grad_(True)  # gradients of the base weights and rel-pos tables are compared too
    for name, parameter in backbone.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters change the output
            torch.nn.init.normal_(parameter, std=0.1)
    return backbone


def run(backbone: SamBackbone) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Encode and decode two images with sparse and dense prompts; return outputs and all gradients."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 40, 40, generator=generator, requires_grad=True)
    sparse = torch.randn(2, 3, 32, generator=generator, requires_grad=True)
    dense = torch.randn(2, 1, 40, 40, generator=generator)
    backbone.zero_grad(set_to_none=True)
    embeddings = backbone.encode_image(images)
    logits = backbone.decode(embeddings, sparse, dense)
    (embeddings.square().mean() + logits.sin().mean()).backward()
    grads = {name: p.grad for name, p in backbone.named_parameters() if p.grad is not None}
    grads.update(images=images.grad, sparse=sparse.grad)
    return {"embeddings": embeddings.detach(), "logits": logits.detach()}, grads


def test_fused_sam_attention_matches_the_reference_forward_and_backward():
    reference, fused = small_sam(), small_sam(fused_attention=True)
    assert isinstance(fused.image_encoder.blocks[1].attn, FusedImageEncoderAttention)
    assert isinstance(fused.mask_decoder.transformer.final_attn_token_to_image, FusedTwoWayAttention)
    assert type(reference.image_encoder.blocks[1].attn) is image_encoder.Attention
    outputs, grads = run(reference)
    fused_outputs, fused_grads = run(fused)
    for key, value in outputs.items():
        assert relative_error(fused_outputs[key], value) < TOLERANCE, key
    assert grads.keys() == fused_grads.keys()
    # gradients reach the LoRA adapters and the relative-position tables through the fused kernel
    assert any("lora_A" in name for name in grads) and "image_encoder.blocks.1.attn.rel_pos_h" in grads
    for name, grad in grads.items():
        if name.endswith("k_proj.bias"):
            # softmax ignores a shift shared by all keys: this gradient is 0 up to rounding (~1e-10) both ways
            assert grad.abs().max() < 1e-8 and fused_grads[name].abs().max() < 1e-8
            continue
        assert relative_error(fused_grads[name], grad) < TOLERANCE, name


def test_fused_attention_keeps_state_dict_keys_and_lora_targets():
    reference, fused = small_sam(), small_sam(fused_attention=True)
    assert list(reference.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(reference.state_dict(), strict=True)
    # switching back restores segment-anything's own classes
    assert use_fused_attention(fused, False) == 3 + 7  # 3 encoder blocks; 2 × 3 decoder layers + final
    assert type(fused.mask_decoder.transformer.final_attn_token_to_image) is transformer.Attention


def test_fused_attention_in_the_tiny_network():
    """model.sam.fused_attention=true on the default composition: same keys, outputs within tolerance."""
    reference, fused = build_tiny_net(), build_tiny_net(["model.sam.fused_attention=true"])
    assert list(reference.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(reference.state_dict())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sentences = ["the red car", "the small house left of the road"]
    with torch.no_grad():
        expected, got = reference.eval()(images, sentences).logits, fused.eval()(images, sentences).logits
    assert relative_error(got, expected) < TOLERANCE


def sdpa_calls(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    return sum(event.count for event in events if event.key == "aten::scaled_dot_product_attention")


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_open_clip_towers_already_run_sdpa(finetune):
    """open_clip's ResidualAttentionBlock calls nn.MultiheadAttention with need_weights=False, which
    dispatches to scaled_dot_product_attention (peft's LoRA wrapper keeps that call)."""
    net = build_tiny_net([f"model.finetune={finetune}"]).train()
    clip = net.clip
    blocks = len(clip.model.visual.transformer.resblocks) + len(clip.model.transformer.resblocks)

    def forward():
        clip.encode_image(torch.rand(1, 3, 64, 64))
        clip.encode_text(["the red car"])

    assert sdpa_calls(forward) == blocks


def test_timm_siglip_attention_is_fused():
    from timm.layers import use_fused_attn

    net = build_tiny_net(["model/clip=tiny_siglip"])
    attentions = [m for n, m in net.clip.model.visual.trunk.named_modules() if hasattr(m, "fused_attn")]
    assert attentions and use_fused_attn()
    assert all(m.fused_attn for m in attentions)
