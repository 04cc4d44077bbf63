"""The cascaded prompter: paper-size parameter count, output contract, padding invariance, PE resize."""

from __future__ import annotations

import pytest
import torch

from rsrefseg.models import CascadedPrompter
from rsrefseg.models.blocks import masked_adaptive_avg_pool

PAPER = dict(vision_dim=1152, text_dim=1152, embed_dim=1152, grid_size=32, prompt_dim=256, mask_size=256)
SMALL = dict(
    vision_dim=48,
    text_dim=40,
    embed_dim=32,
    grid_size=4,
    prompt_dim=24,
    mask_size=16,
    internal_dim=32,
    num_heads=4,
    mlp_dim=32,
)


def test_paper_size_parameter_count():
    with torch.device("meta"):
        prompter = CascadedPrompter(**PAPER)
    count = sum(p.numel() for p in prompter.parameters())
    assert abs(count - 82.77e6) / 82.77e6 < 0.005, count


def _inputs(b=2, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        image_tokens=torch.randn(b, 16, 48, generator=g),
        text_tokens=torch.randn(b, length, 40, generator=g),
        text_padding_mask=torch.zeros(b, length, dtype=torch.bool),
        sentence=torch.randn(b, 32, generator=g),
        logit_scale=torch.tensor(2.0),
        logit_bias=torch.tensor(-1.0),
    )


def test_output_shapes():
    out = CascadedPrompter(**SMALL).eval()(**_inputs())
    assert out.sparse.shape == (2, 9, 24)
    assert out.dense.shape == (2, 1, 16, 16)
    assert out.q1.shape == out.q2.shape == (2, 3, 40)


def test_padding_does_not_change_a_sample():
    """Flaw 1 fixed: padding from a longer sentence elsewhere in the batch changes nothing."""
    torch.manual_seed(0)
    prompter = CascadedPrompter(**SMALL).eval()
    short = _inputs(b=1, length=5)
    padded = dict(short)
    padded["text_tokens"] = torch.cat([short["text_tokens"], torch.randn(1, 4, 40) * 50], dim=1)
    padded["text_padding_mask"] = torch.tensor([[False] * 5 + [True] * 4])
    a, b = prompter(**short), prompter(**padded)
    for x, y in [(a.sparse, b.sparse), (a.dense, b.dense), (a.q1, b.q1), (a.q2, b.q2)]:
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_faithful_mode_attends_padding():
    """text_padding_mask=False reproduces the release: padding changes the output."""
    torch.manual_seed(0)
    prompter = CascadedPrompter(**SMALL, text_padding_mask=False).eval()
    short = _inputs(b=1, length=5)
    padded = dict(short)
    padded["text_tokens"] = torch.cat([short["text_tokens"], torch.randn(1, 4, 40) * 50], dim=1)
    padded["text_padding_mask"] = torch.tensor([[False] * 5 + [True] * 4])
    assert not torch.allclose(prompter(**short).sparse, prompter(**padded).sparse, atol=1e-4)


def test_masked_pool_matches_adaptive_pool_on_valid_prefix():
    tokens = torch.randn(2, 9, 6)
    mask = torch.tensor([[False] * 7 + [True] * 2, [False] * 9])
    pooled = masked_adaptive_avg_pool(tokens, mask, 3)
    for i, n in enumerate([7, 9]):
        expected = torch.nn.functional.adaptive_avg_pool1d(tokens[i, :n].T[None], 3)[0].T
        torch.testing.assert_close(pooled[i], expected)


def test_image_pe_is_resized_for_another_grid():
    prompter = CascadedPrompter(**SMALL).eval()
    inputs = _inputs()
    inputs["image_tokens"] = torch.randn(2, 36, 48)  # 6×6 grid instead of 4×4
    assert prompter(**inputs).dense.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("flag", ["use_sparse", "use_dense"])
def test_ablation_switches(flag):
    out = CascadedPrompter(**SMALL, **{flag: False}).eval()(**_inputs())
    assert (out.sparse if flag == "use_sparse" else out.dense) is None


def test_contracts_fail_at_construction():
    with pytest.raises(ValueError, match="use_sparse"):
        CascadedPrompter(**SMALL, use_sparse=False, use_dense=False)
    with pytest.raises(ValueError, match="depths"):
        CascadedPrompter(**SMALL, depths=(2, 0, 2))


def test_dense_head_equals_cosine_of_upsampled_features():
    """The head's shortcut (dot product before upsampling) is the formula of docs/method.md §2.7 exactly."""
    from rsrefseg.models.prompter.heads import DensePromptHead

    torch.manual_seed(0)
    head = DensePromptHead(vision_dim=8, embed_dim=6, mask_size=20).eval()
    tokens, sentence = torch.randn(2, 16, 8), torch.randn(2, 6)
    scale, bias = torch.tensor(1.5), torch.tensor(-0.5)
    x = tokens.transpose(1, 2).reshape(2, 8, 4, 4)
    x = head.conv2(torch.nn.functional.gelu(head.norm(head.conv1(x))))
    up = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=True)
    reference = torch.nn.functional.cosine_similarity(up, sentence[:, :, None, None], dim=1)[:, None]
    reference = reference * scale.exp() + bias
    torch.testing.assert_close(head(tokens, 4, sentence, scale, bias), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("grid", "size"), [(4, 20), (8, 64), (5, 5), (1, 16)])
def test_upsampled_norm_equals_the_norm_of_the_upsampled_map(grid, size):
    """The dense head's norm without the B×C×M×M map: same values and gradients as the direct form."""
    from rsrefseg.models.prompter.heads import upsampled_norm

    torch.manual_seed(0)
    x = torch.randn(3, 7, grid, grid, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 1, size, size, dtype=torch.float64)
    direct = torch.linalg.vector_norm(
        torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=True),
        dim=1,
        keepdim=True,
    )
    (grad_direct,) = torch.autograd.grad((direct * weights).sum(), x)
    fast = upsampled_norm(x, size)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), x)
    assert fast.shape == (3, 1, size, size)
    torch.testing.assert_close(fast, direct, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_fast, grad_direct, atol=1e-12, rtol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = upsampled_norm(x.detach().to(torch.bfloat16), size)
    assert low.dtype == torch.float32  # the channel sum in float32 whatever the autocast


def test_upsampled_norm_of_a_zero_map_has_zero_gradient():
    """As the direct norm's backward at 0: no NaN / inf reaches the features."""
    from rsrefseg.models.prompter.heads import upsampled_norm

    x = torch.zeros(1, 4, 3, 3, requires_grad=True)
    upsampled_norm(x, 9).clamp_min(1e-12).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_dense_head_runs_on_the_meta_device():
    """Shape checks build real-size networks on the meta device, which has no autocast."""
    from rsrefseg.models.prompter.heads import DensePromptHead

    head = DensePromptHead(vision_dim=8, embed_dim=6, mask_size=16).to("meta")
    meta = {"device": "meta"}
    scale, bias = torch.zeros((), **meta), torch.zeros((), **meta)
    out = head(torch.randn(2, 16, 8, **meta), 4, torch.randn(2, 6, **meta), scale, bias)
    assert out.shape == (2, 1, 16, 16) and out.device.type == "meta"
