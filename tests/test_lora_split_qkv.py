"""`model.lora.split_qkv`: one rank-r adapter per projection on CLIP's fused q/k/v weights, as released."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsrefseg.models.fused_qkv_lora import SplitQkvLinear, SplitQkvMultiheadAttention
from rsrefseg.training.checkpoint_files import export_merged, load_module
from rsrefseg.training.checkpointing import merge_lora
from test_checkpoints import backbone_files, build, outputs, save_like_lightning

R, ALPHA = 4, 8


def _randomise_adapters(module: nn.Module, seed: int = 0) -> None:
    """Adapters start as a no-op (B = 0); give every one a non-zero update."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _per_projection_update(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The fused 3C×C update written as three separate LoRAs, one per q / k / v slice."""
    return torch.cat([(ALPHA / R) * b[i] @ a[i] for i in range(3)], dim=0)


def test_split_linear_is_three_rank_r_loras_on_the_q_k_v_slices():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    wrapped = SplitQkvLinear(base, r=R, alpha=ALPHA)
    assert wrapped.lora.lora_A.shape == (3, R, 8) and wrapped.lora.lora_B.shape == (3, 8, R)
    x = torch.randn(2, 5, 8)
    assert torch.equal(wrapped(x), base(x)), "B starts at zero: training starts from the base weight"
    _randomise_adapters(wrapped)
    a, b = wrapped.lora.lora_A, wrapped.lora.lora_B
    expected = F.linear(x, base.weight + _per_projection_update(a, b), base.bias)
    torch.testing.assert_close(wrapped(x), expected)
    # q's adapter never touches k or v: its gradient comes only from the q slice of the output
    wrapped(x)[..., 8:].sum().backward()
    assert wrapped.lora.lora_A.grad[0].abs().sum() == 0 and wrapped.lora.lora_A.grad[1:].abs().sum() > 0
    assert not any(p.requires_grad for p in base.parameters())


def test_split_multihead_attention_adapts_q_k_v_and_the_output_projection():
    torch.manual_seed(0)
    base = nn.MultiheadAttention(8, 2, batch_first=True)
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    wrapped = SplitQkvMultiheadAttention(base, r=R, alpha=ALPHA)
    _randomise_adapters(wrapped)
    qkv, out = wrapped.qkv_lora, wrapped.out_lora
    with torch.no_grad():
        reference.in_proj_weight.copy_(base.in_proj_weight + _per_projection_update(qkv.lora_A, qkv.lora_B))
        reference.in_proj_bias.copy_(base.in_proj_bias)
        reference.out_proj.weight.copy_(base.out_proj.weight + (ALPHA / R) * out.lora_B[0] @ out.lora_A[0])
        reference.out_proj.bias.copy_(base.out_proj.bias)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    got = wrapped(x, x, x, need_weights=False, key_padding_mask=mask)[0]
    torch.testing.assert_close(got, reference(x, x, x, need_weights=False, key_padding_mask=mask)[0])
    got.sum().backward()
    assert qkv.lora_A.grad is not None and base.in_proj_weight.grad is None


def test_lora_dropout_on_attention_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model\.lora\.dropout"):
        SplitQkvMultiheadAttention(nn.MultiheadAttention(8, 2), r=R, alpha=ALPHA, dropout=0.1)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_split_qkv_places_one_adapter_per_projection_in_both_clip_towers(tmp_path):
    files = backbone_files(tmp_path, "tiny_siglip", "tiny")
    fused = build([*files, "model.finetune=lora"])
    split = build([*files, "model.finetune=lora", "model.lora.split_qkv=true"])
    clip = split.net.clip.model
    trunk_qkv = [m for n, m in clip.visual.named_modules() if n.endswith("attn.qkv")]
    text_attn = [m for n, m in clip.text.named_modules() if n.endswith(".attn")]
    assert trunk_qkv and all(isinstance(m, SplitQkvLinear) for m in trunk_qkv)
    assert text_attn and all(isinstance(m, SplitQkvMultiheadAttention) for m in text_attn)
    # per fused C→3C weight: 3·r·(C + C) against peft's r·(C + 3C), i.e. 2·r·C more; SAM is unchanged
    r = 16  # model.lora.r
    extra = sum(2 * r * m.base_layer.in_features for m in trunk_qkv) + sum(
        2 * r * m.base_layer.embed_dim for m in text_attn
    )
    assert _count(split.net.clip) - _count(fused.net.clip) == extra
    assert _count(split.net.sam) == _count(fused.net.sam)


def test_split_qkv_merges_saves_and_reloads(tmp_path):
    module = build(
        [
            *backbone_files(tmp_path, "tiny_siglip", "tiny"),
            "model.finetune=lora",
            "model.lora.split_qkv=true",
        ]
    )
    _randomise_adapters(module.net.clip)
    before = outputs(module)

    save_like_lightning(module, tmp_path / "run.ckpt")
    reloaded = load_module(tmp_path / "run.ckpt")
    assert torch.equal(outputs(reloaded), before)

    export_merged(tmp_path / "run.ckpt", tmp_path / "merged.ckpt")
    torch.testing.assert_close(outputs(load_module(tmp_path / "merged.ckpt")), before, rtol=1e-4, atol=1e-4)

    assert merge_lora(reloaded.net) > 0
    assert not any(isinstance(m, SplitQkvLinear | SplitQkvMultiheadAttention) for m in reloaded.modules())
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(outputs(reloaded), before, rtol=1e-4, atol=1e-4)


def test_lora_settings_reject_a_value_that_is_not_a_switch():
    from rsrefseg.models import LoraSettings

    with pytest.raises(ValueError, match=r"model\.lora\.split_qkv must be true or false, got 'maybe'"):
        LoraSettings(split_qkv="maybe")
    with pytest.raises(ValueError, match=r"model\.lora\.r must be a positive integer"):
        LoraSettings(r=0)
