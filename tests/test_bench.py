"""`rsrefseg-bench`: the quick run's JSON, timing statistics, MFU arithmetic, the two paths, the GPU suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from rsrefseg.bench import report as bench_report
from rsrefseg.bench.mfu import Peak, builtin_peak, device_peak, mfu
from rsrefseg.bench.paths import PathSettings, apply_overrides, call_layout, per_sample_decoding
from rsrefseg.bench.report import missing_fields
from rsrefseg.bench.run import Settings
from rsrefseg.bench.suite import compose_entry, suite_entries
from rsrefseg.bench.timing import summarize, time_calls
from rsrefseg.config.schema import check_config
from rsrefseg.errors import ConfigError

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# quick=true end to end
# --------------------------------------------------------------------------------------------------


def test_quick_run_writes_every_field_and_consistent_figures(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSREFSEG_LOG_DIR": str(tmp_path / "logs")}
    out = tmp_path / "tables"
    # one thread: this machine's cores are shared, and waiting OpenMP threads spin
    command = [sys.executable, "-m", "rsrefseg.cli.bench", "quick=true", "bench.threads=1", f"out_dir={out}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert missing_fields(report) == []
    assert report["schema"] == "rsrefseg-bench/1" and report["quick"] and report["threads"] == 1
    assert [(r["batch_size"], r["sentences_per_image"]) for r in report["inference"]] == [(4, 1), (4, 4)]
    for row in report["inference"]:
        for name in ("fast", "stock"):
            m = row[name]
            assert m["repeats"] == 3 and m["min_s"] <= m["median_s"] <= m["max_s"]
            assert m["sentences_per_s"] == pytest.approx(row["sentences_per_image"] * m["images_per_s"])
            assert m["peak_memory_bytes"] > 0 and m["flops_per_call"] > 0
            assert m["mfu"] is None  # no CPU peak is built in
        assert row["ratio"]["images_per_s"] == pytest.approx(
            row["fast"]["images_per_s"] / row["stock"]["images_per_s"]
        )
    shared, repeated = report["inference"][1]["fast"], report["inference"][1]["stock"]
    # at 4 sentences per image the stock path encodes every image 4 times: more FLOPs per call
    assert repeated["flops_per_call"] > 1.5 * shared["flops_per_call"]
    (train,) = report["training"]
    assert train["fast"]["samples_per_s"] > 0 and train["stock"]["flops_per_call"] > 0
    (loader,) = report["loader"]
    assert loader["num_workers"] == {"fast": 2, "stock": 0}
    assert "synthetic export" in report["loader_dataset"]
    assert (
        report["paths"]["stock"]["per_sample_decoding"] and not report["paths"]["fast"]["per_sample_decoding"]
    )
    applied = report["paths"]["stock"]["applied"] + report["paths"]["stock"]["skipped"]
    assert applied == report["paths"]["stock"]["overrides"]
    text = (out / "bench.txt").read_text()
    assert "inference" in text and "training steps" in text and "data loader" in text
    # an existing output is kept
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "force=true" in again.stderr


def test_the_schema_docstring_names_every_field():
    doc = bench_report.__doc__
    fields = [
        *bench_report.TOP_LEVEL,
        *bench_report.MEASUREMENT,
        *bench_report.PATH_FIELDS,
        *(k for shape in bench_report.SECTIONS.values() for part in shape.values() for k in part),
    ]
    assert [f for f in fields if f not in doc] == []


def test_missing_fields_names_the_gap():
    row = {"batch_size": 1, "sentences_per_image": 1, "sentences": 1, "ratio": {}, "stock": {}}
    missing = missing_fields({"inference": [row]})
    assert "schema" in missing and "inference[0].fast" in missing and "inference[0].stock.median_s" in missing


# --------------------------------------------------------------------------------------------------
# timing and MFU
# --------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, ticks):
        self.ticks = list(ticks)

    def __call__(self):
        return self.ticks.pop(0)


def test_warmup_is_excluded_and_median_and_spread_come_from_the_repeats():
    calls = []
    # start 0, after 2 warm-up calls 10, then repeats of 1, 2, 3 and 4 s
    clock = FakeClock([0, 10, 10, 11, 11, 13, 13, 16, 16, 20])
    timing = time_calls(lambda: calls.append(1), warmup=2, repeats=4, device=CPU, clock=clock)
    assert len(calls) == 6
    assert timing.warmup_s == 10 and timing.repeats == 4 and timing.clock == "perf_counter"
    assert timing.median_s == 2.5 and (timing.min_s, timing.max_s) == (1, 4)
    # inclusive quartiles of 1, 2, 3, 4: 1.75 and 3.25
    assert timing.iqr_s == pytest.approx(1.5) and timing.spread == pytest.approx(0.6)


def test_timing_statistics_edge_cases():
    one = summarize([0.5])
    assert (one.median_s, one.iqr_s, one.spread) == (0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="repeats"):
        summarize([])
    with pytest.raises(ValueError, match="did not advance"):
        summarize([0.1, 0.0])
    with pytest.raises(ValueError, match=r"bench\.repeats"):
        time_calls(lambda: None, warmup=0, repeats=0, device=CPU)


def test_mfu_is_flops_over_time_over_peak():
    h200 = builtin_peak("NVIDIA H200")
    assert h200.flops_per_s == builtin_peak("NVIDIA H100 80GB HBM3").flops_per_s == 989.4e12
    # 2.6 TFLOPs per image at 100 images/s on a 989.4 TFLOP/s device: 26.3 %
    assert mfu(2.6e12 * 16, 0.16, h200) == pytest.approx(2.6e14 / 989.4e12)
    assert builtin_peak("NVIDIA GeForce RTX 4090").flops_per_s is None
    assert device_peak(CPU).flops_per_s is None and mfu(1e9, 1.0, device_peak(CPU)) is None
    assert mfu(1e9, 0.5, device_peak(CPU, peak_tflops=0.002)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="peak_tflops"):
        device_peak(CPU, peak_tflops=0)
    assert mfu(None, 1.0, Peak(1e12, "x")) is None


# --------------------------------------------------------------------------------------------------
# the two paths
# --------------------------------------------------------------------------------------------------


def test_path_overrides_apply_present_keys_skip_absent_ones_and_refuse_groups():
    cfg = compose_config("bench")
    path = PathSettings("stock", overrides=["data.num_workers=3", "model.no_such_switch=true"])
    changed, applied, skipped = apply_overrides(cfg, path)
    assert changed.data.num_workers == 3 and cfg.data.num_workers == 0
    assert applied == ["data.num_workers=3"] and skipped == ["model.no_such_switch=true"]
    for bad in ("model/sam=vit_b", "+model.extra=1", "model.sam=1"):
        with pytest.raises(ConfigError, match=r"bench\.paths\.stock"):
            apply_overrides(cfg, PathSettings("stock", overrides=[bad]))


def test_the_stock_layout_repeats_images_and_the_fast_one_indexes_them():
    images = torch.arange(2.0).view(2, 1, 1, 1)
    sentences = ["a", "b", "c", "d", "e", "f"]
    shared, _, index = call_layout(images, sentences, 3, shared=True)
    repeated, _, none = call_layout(images, sentences, 3, shared=False)
    assert shared.shape[0] == 2 and index.tolist() == [0, 0, 0, 1, 1, 1]
    assert none is None and repeated.flatten().tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="sentences per image"):
        call_layout(images, sentences[:5], 3, shared=True)


def test_per_sample_decoding_matches_batched_decoding(tiny_net, monkeypatch):
    net = tiny_net.eval()
    size = net.sam.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    sentences = ["the red roof", "the small car left of the tree", "a pool"]
    decoded = []
    original = type(net.sam).decode

    def counting(self, features, sparse, dense):
        decoded.append(features.shape[0])
        return original(self, features, sparse, dense)

    monkeypatch.setattr(type(net.sam), "decode", counting)
    with torch.no_grad():
        reference = net(images, sentences).logits
        with per_sample_decoding(net):
            per_sample = net(images, sentences).logits
    assert decoded == [3, 1, 1, 1]
    assert "decode" not in vars(net.sam)
    # one image at a time: the same numbers up to float summation order
    torch.testing.assert_close(per_sample, reference, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the GPU suite: every entry composes; shapes built on the meta device where the backbone allows
# --------------------------------------------------------------------------------------------------


def gpu_entries():
    return suite_entries(compose_config("bench"), "gpu")


def test_gpu_suite_covers_the_targets():
    entries = {e["name"]: e for e in gpu_entries()}
    paper = compose_entry(entries["paper"], ["paths.output_dir=/tmp/rsrefseg-bench-test"])
    settings = Settings.from_config(paper)
    assert (16, 1) in settings.inference and (16, 8) in settings.inference and (8, 1) in settings.training
    scaling = Settings.from_config(compose_entry(entries["paper_batch_scaling"], ["paths.output_dir=/tmp/x"]))
    assert {b for b, _ in scaling.inference} | {16} >= {1, 2, 4, 8, 16, 32, 64}
    sams = {o.split("=")[1] for e in entries.values() for o in e["overrides"] if o.startswith("model/sam=")}
    assert sams == {"hiera_l", "vit_h", "vit_b"}


@pytest.mark.parametrize("entry", gpu_entries(), ids=lambda e: e["name"])
def test_every_gpu_suite_entry_composes_and_builds_its_shapes(entry):
    cfg = compose_entry(entry, ["paths.output_dir=/tmp/rsrefseg-bench-test", "+model.clip.model.device=meta"])
    check_config(cfg)
    OmegaConf.to_container(cfg.model, resolve=True)
    settings = Settings.from_config(cfg)
    assert settings.inference or settings.training
    for name in ("fast", "stock"):
        apply_overrides(cfg, PathSettings.from_config(name, cfg.bench.paths[name]))
    assert cfg.model.clip.model.pretrained is None and cfg.model.sam.sam.checkpoint is None
    if "hiera" in cfg.model.sam.sam.get("config", ""):
        # SAM 2's Hiera cannot be built on the meta device: CLIP and the prompter are
        clip = instantiate(cfg.model.clip, _convert_="partial")
        with torch.device("meta"):
            prompter = instantiate(cfg.model.prompter, _convert_="partial")
        assert next(clip.model.parameters()).is_meta and next(prompter.parameters()).is_meta
        return
    with torch.device("meta"):
        net = instantiate(cfg.model, _convert_="partial")
    assert all(p.is_meta for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) > 300e6


def test_a_suite_runs_every_entry_with_the_command_line_overrides(tmp_path, monkeypatch):
    from rsrefseg.bench import suite as bench_suite

    seen = []

    def fake_benchmark(cfg, *, name, composition):
        seen.append((name, composition, cfg.bench.threads, cfg.bench.repeats, cfg.model.sam.image_size))
        report = {key: None for key in bench_report.TOP_LEVEL}
        paths = {p: {k: [] for k in bench_report.PATH_FIELDS} for p in ("fast", "stock")}
        report.update(name=name, composition=composition, paths=paths, inference=[], training=[], loader=[])
        report.update(wall_s=1.0, repeats=3, warmup=1)
        return report

    monkeypatch.setattr(bench_suite, "run_benchmark", fake_benchmark)
    cfg = compose_config("bench", ["suite=check", f"out_dir={tmp_path}"])
    entries = [
        {"name": "a", "overrides": ["model.sam.image_size=128", "model.sam.mask_size=128"], "bench": {}},
        {"name": "b", "overrides": [], "bench": {"repeats": 7}},
    ]
    OmegaConf.update(cfg, "suites", {"check": entries}, force_add=True)
    command_line = ["suite=check", f"out_dir={tmp_path}", "bench.threads=1", "bench.repeats=2"]
    written = bench_suite.run_configured(cfg, choices={}, overrides=command_line)
    assert {p.name for p in written} == {"a.json", "b.json", "suite.txt"}
    assert json.loads((tmp_path / "a.json").read_text())["name"] == "a"
    # the command line reaches every entry; an entry's own bench settings win
    assert seen == [
        ("a", "model.sam.image_size=128, model.sam.mask_size=128", 1, 2, 128),
        ("b", "as composed", 1, 7, 64),
    ]
    with pytest.raises(FileExistsError, match="force=true"):
        bench_suite.run_configured(cfg, choices={}, overrides=command_line)
    with pytest.raises(ConfigError, match="suites"):
        bench_suite.run_configured(compose_config("bench", ["suite=nope"]), choices={})
