"""model.compile: torch.compile'd CLIP image encoder, SAM image encoder and prompter agree with eager
(forward, gradients, and the network after one optimizer step), keep the state-dict keys and log
their compile time."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_net

#: fp32: inductor fuses and reorders reductions; max |compiled − eager| / max |eager| per tensor
TOLERANCE = 1e-4
#: gradients that are 0 in exact arithmetic (attention key biases: softmax ignores a shared shift)
#: come out as rounding noise of ~1e-12 both ways
GRAD_FLOOR = 1e-9

SENTENCES = ["the red car", "the small house left of the road"]


def close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((got - expected).abs().max() <= TOLERANCE * expected.abs().max() + GRAD_FLOOR)


def train_step(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor):
    out = net(images, SENTENCES)
    loss = F.binary_cross_entropy_with_logits(out.logits, masks) + out.vision_tokens.square().mean()
    loss.backward()
    return out


@pytest.mark.slow  # dynamo traces forward and backward of three parts (~30 s)
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_network_matches_eager_forward_and_training_step(caplog, backend):
    """Graph capture (dynamo + AOT autograd) is what can break our code; inductor's generated kernels
    are torch's (and cost minutes of C++ compilation on a cold CPU cache, too long for CI)."""
    eager = build_tiny_net().train()
    compiled = build_tiny_net(["model.compile=true", f"model.compile_backend={backend}"]).train()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    masks = (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float()

    with caplog.at_level(logging.INFO, logger="rsrefseg.models.compilation"):
        got = train_step(compiled, images, masks)
    expected = train_step(eager, images, masks)
    for key in ("logits", "vision_tokens", "sentence"):
        assert close(getattr(got, key), getattr(expected, key)), key
    assert close(got.prompts.sparse, expected.prompts.sparse)
    reference = dict(eager.named_parameters())
    for name, parameter in compiled.named_parameters():
        assert (parameter.grad is None) == (reference[name].grad is None), name
        if parameter.grad is not None:
            assert close(parameter.grad, reference[name].grad), name
    parts = compiled.compiled_parts
    assert set(parts) == {"clip.encode_image", "sam.encode_image", "prompter"}
    assert all(part.first_call_seconds > 0 for part in parts.values())
    assert sum("first call" in record.getMessage() for record in caplog.records) == 3

    for net in (eager, compiled):
        with torch.no_grad():
            for parameter in net.parameters():
                if parameter.grad is not None:
                    parameter -= 0.1 * parameter.grad
    # same mode and shapes as the compiled graphs (eval or no-grad would recompile)
    after, expected_after = compiled(images, SENTENCES), eager(images, SENTENCES)
    assert close(after.logits, expected_after.logits)


def test_compile_is_off_by_default_and_rejects_a_second_call():
    net = build_tiny_net()
    assert net.compiled_parts == {}
    net.compile_parts()  # lazy: nothing is compiled before the first call
    with pytest.raises(RuntimeError, match="already"):
        net.compile_parts()
