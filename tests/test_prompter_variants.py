"""The prompter ablations (docs/method.md §3): every `model/prompter` option composes, builds on the tiny
backbones, trains (every trainable weight reached), keeps samples independent and runs the entry point."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.config.build import CONFIG_DIR, build_module
from rsrefseg.models import ActivationV1Prompter, CascadedPrompter

# option → (sparse tokens on the tiny backbones or None, dense prompt, q1, q2)
VARIANTS = {
    "cascaded": (9, True, True, True),
    "first_order": (9, True, False, True),
    "no_dense": (9, False, True, True),
    "no_sparse": (None, True, True, True),
    "activation_v1": (16, True, False, False),  # sparse_grid 4 under the synthetic_cpu experiment
}
SENTENCES = ["the small red car left of the large building", "the ship", "white storage tank", "a tree"]
PAPER = dict(vision_dim=1152, text_dim=1152, embed_dim=1152, grid_size=32, prompt_dim=256, mask_size=256)


@functools.cache
def variant_config(variant: str):
    """The default run's config with ``model/prompter=<variant>`` (composed once per variant; read only)."""
    return compose_config("train", [f"model/prompter={variant}"])


def test_the_variant_table_lists_every_prompter_config():
    assert {p.stem for p in (Path(CONFIG_DIR) / "model" / "prompter").glob("*.yaml")} == set(VARIANTS)


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained_step(request):
    """One training forward and backward through the full loss on the tiny network, per variant.

    Built as the entry points build it (``build_module``), so the wiring that freezes weights a
    variant never uses (CLIP's sentence projection without a dense prompt, the contrastive
    temperature without Stage-0 queries) is part of what is tested.
    """
    variant = request.param
    cfg = variant_config(variant)
    torch.manual_seed(0)
    module = build_module(cfg, None)
    net, loss = module.net, module.loss
    out = net.train()(torch.rand(4, 3, 64, 64), SENTENCES)
    terms = loss.for_output(out, (torch.rand(4, 1, 64, 64) > 0.7).float())
    terms["loss"].backward()
    return variant, net, loss, out, terms


def test_forward_shapes_and_loss_terms(trained_step):
    variant, _, _, out, terms = trained_step
    num_sparse, has_dense, has_q1, has_q2 = VARIANTS[variant]
    prompts = out.prompts
    assert out.logits.shape == (4, 1, 64, 64)
    assert (prompts.sparse is None) if num_sparse is None else prompts.sparse.shape == (4, num_sparse, 64)
    assert prompts.dense.shape == (4, 1, 64, 64) if has_dense else prompts.dense is None
    assert (prompts.q1 is not None, prompts.q2 is not None) == (has_q1, has_q2)
    # L_orth needs the pair, L_ctr the query set that activates the image
    assert ("orth" in terms, "contrastive" in terms) == (has_q1, has_q2)
    assert torch.isfinite(terms["loss"])


def test_every_trainable_prompter_weight_gets_a_gradient(trained_step):
    """Modules that feed only a dropped prompt (or a dropped stage) must not be built."""
    _, net, _, _, _ = trained_step
    missing = [n for n, p in net.prompter.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_every_trainable_weight_gets_a_gradient(trained_step):
    variant, net, loss, _, _ = trained_step
    named = [
        *(("net." + n, p) for n, p in net.named_parameters()),
        *(("loss." + n, p) for n, p in loss.named_parameters()),
    ]
    # DDP without an unused-parameter search fails on any trainable weight the loss does not reach
    missing = {n for n, p in named if p.requires_grad and p.grad is None}
    assert missing == set(), variant


def _prompter_inputs(lengths: list[int], *, seed: int = 0) -> dict:
    """Tiny-width inputs (C = 96, g = 8) for a batch whose sentences have the given token counts."""
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    return dict(
        image_tokens=torch.randn(len(lengths), 64, 96, generator=g),
        text_tokens=torch.randn(len(lengths), length, 96, generator=g),
        text_padding_mask=torch.arange(length)[None] >= torch.tensor(lengths)[:, None],
        sentence=torch.randn(len(lengths), 96, generator=g),
        logit_scale=torch.tensor(2.0),
        logit_bias=torch.tensor(-1.0),
    )


def _sample(inputs: dict, i: int, length: int) -> dict:
    """Sample i alone, its text cut to its own length (no padding)."""
    one = dict(inputs, image_tokens=inputs["image_tokens"][i : i + 1], sentence=inputs["sentence"][i : i + 1])
    one["text_tokens"] = inputs["text_tokens"][i : i + 1, :length]
    one["text_padding_mask"] = inputs["text_padding_mask"][i : i + 1, :length]
    return one


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_sample_s_prompts_depend_on_that_sample_only(variant):
    torch.manual_seed(0)
    prompter = instantiate(variant_config(variant).model.prompter).eval()
    lengths = [3, 7, 5]
    inputs = _prompter_inputs(lengths)
    # padding carries garbage: only the mask may keep it out
    inputs["text_tokens"][inputs["text_padding_mask"]] = 100.0
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["image_tokens"][2] += 1.0
    changed["text_tokens"][2, :5] *= -1
    changed["sentence"][2] += 1.0
    with torch.no_grad():
        batched, perturbed = prompter(**inputs), prompter(**changed)
        alone = [prompter(**_sample(inputs, i, n)) for i, n in enumerate(lengths[:2])]
    for field in ("sparse", "dense", "q1", "q2"):
        full, other = getattr(batched, field), getattr(perturbed, field)
        if full is None:
            continue
        for i in range(2):
            torch.testing.assert_close(full[i : i + 1], getattr(alone[i], field), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(full[:2], other[:2], atol=0, rtol=0)
        assert not torch.allclose(full[2], other[2])


@pytest.mark.parametrize(
    ("prompter", "expected"),
    [
        (lambda: CascadedPrompter(**PAPER, second_order=False), 44_929_472),
        (lambda: CascadedPrompter(**PAPER, use_dense=False), 70_826_496),
        (lambda: CascadedPrompter(**PAPER, use_sparse=False), 74_622_528),
        # SigLIP widths match, so the patch projections are identities: 1×1 reduce, PE, 2 stride-2
        # convs, output 1×1 conv
        (lambda: ActivationV1Prompter(**PAPER), 2_394_624),
    ],
    ids=["first_order", "no_dense", "no_sparse", "activation_v1"],
)
def test_paper_size_parameter_counts(prompter, expected):
    with torch.device("meta"):
        count = sum(p.numel() for p in prompter().parameters())
    assert count == expected


SMALL = dict(vision_dim=48, text_dim=40, embed_dim=32, grid_size=4, prompt_dim=24, mask_size=16)
SMALL_ATTENTION = dict(internal_dim=32, num_heads=4, mlp_dim=32)


def _small_inputs(b: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        image_tokens=torch.randn(b, 16, 48, generator=g),
        text_tokens=torch.randn(b, 6, 40, generator=g),
        text_padding_mask=torch.tensor([[False] * 6, [False] * 3 + [True] * 3])[:b],
        sentence=torch.randn(b, 32, generator=g),
        logit_scale=torch.tensor(2.0),
        logit_bias=torch.tensor(-1.0),
    )


@pytest.mark.parametrize("second_order", [True, False])
@pytest.mark.parametrize(("use_sparse", "use_dense"), [(True, True), (True, False), (False, True)])
def test_every_switch_combination_builds_only_what_it_uses(second_order, use_sparse, use_dense):
    """Including combinations no config names (first_order without sparse prompts has no Stage 2)."""
    prompter = CascadedPrompter(
        **SMALL, **SMALL_ATTENTION, second_order=second_order, use_sparse=use_sparse, use_dense=use_dense
    )
    out = prompter(**_small_inputs())
    assert (out.sparse is not None, out.dense is not None) == (use_sparse, use_dense)
    assert (out.q1 is not None) == second_order
    sum(x.square().mean() for x in (out.sparse, out.dense, out.q1, out.q2) if x is not None).backward()
    assert [n for n, p in prompter.named_parameters() if p.grad is None] == []
    if not second_order:
        assert prompter.query_pe2 is None and prompter.decomposition is None and prompter.second_order is None
        assert len(prompter.prompt_layers) == (2 if use_sparse else 0)


def test_activation_v1_dense_prompt_is_the_upsampled_global_similarity_logits():
    torch.manual_seed(0)
    prompter = ActivationV1Prompter(**SMALL, sparse_grid=2).eval()
    inputs = _small_inputs()
    out = prompter(**inputs)
    patches = prompter.patch_to_embed(inputs["image_tokens"])  # widths differ: a learnable linear
    cos = torch.nn.functional.cosine_similarity(patches, inputs["sentence"][:, None], dim=-1)
    logits = (cos * inputs["logit_scale"].exp() + inputs["logit_bias"]).reshape(2, 1, 4, 4)
    expected = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.dense, expected, atol=1e-5, rtol=1e-5)
    assert out.sparse.shape == (2, 4, 24) and out.q1 is None and out.q2 is None


@pytest.mark.parametrize(
    ("grid_size", "sparse_grid", "convs"),
    [(27, 7, 2), (32, 7, 2), (8, 4, 1), (8, 8, 0)],  # v1's SigLIP grid 27 → 14 → 7; 32 → 16 → 8, pooled to 7
)
def test_activation_v1_halves_the_grid_while_it_stays_at_least_sparse_grid(grid_size, sparse_grid, convs):
    dims = dict(SMALL, grid_size=grid_size)
    prompter = ActivationV1Prompter(**dims, sparse_grid=sparse_grid).eval()
    assert len(prompter.downsample) == convs
    inputs = _small_inputs()
    inputs["image_tokens"] = torch.randn(2, grid_size**2, 48)
    assert prompter(**inputs).sparse.shape == (2, sparse_grid**2, 24)


def test_activation_v1_faithful_mode_averages_over_padding():
    """text_padding_mask=False reproduces v1: padding changes the local activation, hence the prompts."""
    torch.manual_seed(0)
    prompter = ActivationV1Prompter(**SMALL, sparse_grid=2, text_padding_mask=False).eval()
    short = _small_inputs(b=1)
    padded = dict(short)
    padded["text_tokens"] = torch.cat([short["text_tokens"], torch.randn(1, 4, 40)], dim=1)
    padded["text_padding_mask"] = torch.tensor([[False] * 6 + [True] * 4])
    assert not torch.allclose(prompter(**short).sparse, prompter(**padded).sparse, atol=1e-4)


def test_activation_v1_contract_fails_at_construction():
    with pytest.raises(ValueError, match="sparse_grid"):
        ActivationV1Prompter(**SMALL, sparse_grid=5)


def test_prompter_sizes_and_finetuning_follow_the_clip_backbone():
    """The CLIP config selects its scale (model/clip/scale): tiny backbones get the CPU prompter and full
    fine-tuning, real-size ones the paper's widths and LoRA — with or without an experiment."""
    tiny = variant_config("activation_v1").model.prompter
    assert tiny.sparse_grid == 4 and "internal_dim" not in tiny
    assert variant_config("first_order").model.prompter.internal_dim == 128
    assert variant_config("first_order").model.finetune == "full"
    # the default experiment is sized for the tiny backbones; paper-size ones bring their own sizes
    paper = compose_config("train", ["model/clip=siglip2_so400m_512", "model/sam=hiera_l"]).model
    assert (paper.prompter.internal_dim, paper.prompter.num_heads, paper.prompter.mlp_dim) == (512, 8, 512)
    assert paper.finetune == "lora"
    v1 = compose_config("train", ["model/clip=vit_b16", "model/prompter=activation_v1"]).model.prompter
    assert v1.sparse_grid == 7
    # a CPU smoke recipe keeps full fine-tuning and the tiny sizes; the paper recipe the paper's
    assert compose_config("train", ["experiment=rrsisd_tiny"]).model.prompter.internal_dim == 128
    recipe = compose_config("train", ["experiment=rrsisd", "model.sam.sam.checkpoint=/w/sam.pt"]).model
    assert (recipe.prompter.internal_dim, recipe.finetune) == (512, "lora")
    # every size stays a command-line key, and so does the scale
    assert compose_config("train", ["prompter_size.internal_dim=64"]).model.prompter.internal_dim == 64
    chosen = compose_config("train", ["model/clip/scale=paper"]).model
    assert (chosen.prompter.internal_dim, chosen.finetune) == (512, "lora")


# --- the console script, one Hydra multirun over the ablations (cascaded: test_entrypoints) --------

ABLATIONS = [v for v in VARIANTS if v != "cascaded"]


@pytest.fixture(scope="module")
def fast_dev_sweep(tmp_path_factory) -> Path:
    """``rsrefseg-train -m model/prompter=<ablations> debug=fdr`` once; job i ran ABLATIONS[i].

    One process for all jobs: a process per variant would spend most of its time importing.
    """
    tmp = tmp_path_factory.mktemp("variants")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "RSREFSEG_LOG_DIR": str(tmp / "logs"),
    }
    args = [
        "-m",
        f"model/prompter={','.join(ABLATIONS)}",
        "debug=fdr",
        "logger=none",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "shuffled_sentence_test=false",
        "trivial_baselines=false",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    ]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rsrefseg-train"), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return tmp / "sweep"


@pytest.mark.parametrize("variant", ABLATIONS)
def test_fast_dev_run_trains_and_tests_each_ablation(fast_dev_sweep, variant):
    job = fast_dev_sweep / str(ABLATIONS.index(variant))
    resolved = OmegaConf.load(job / "config_resolved.yaml").model.prompter
    expected = OmegaConf.to_container(variant_config(variant).model.prompter, resolve=True)
    assert OmegaConf.to_container(resolved) == expected
    payload = json.loads((job / "metrics.json").read_text())
    assert payload["global_step"] == 1
    # fast_dev_run tests one batch of eval_batch_size
    test = payload["metrics"]["test"]
    assert test["num_samples"] == 2 and 0 <= test["gIoU"] <= 100


@pytest.mark.parametrize("variant", ["no_dense", "activation_v1"])
def test_lora_run_reaches_every_trainable_weight(variant):
    """Under LoRA the text-projection adapter is trainable too: without a dense prompt it must freeze."""
    torch.manual_seed(0)
    module = build_module(compose_config("train", [f"model/prompter={variant}", "model.finetune=lora"]), None)
    out = module.net.train()(torch.rand(2, 3, 64, 64), SENTENCES[:2])
    module.loss.for_output(out, (torch.rand(2, 1, 64, 64) > 0.7).float())["loss"].backward()
    assert [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None] == []
