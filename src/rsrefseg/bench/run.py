"""One benchmark of one composition: every figure for the fast path and the stock path, in one process.

The fast path runs first, then the stock path, each on its own network built from the same seed
(so the weights agree) and freed before the next, so each path's peak memory is its own. FLOPs are
counted on the stock path's network (eager, never compiled) for the call layout of each path: the
fast path's shared encodings do less work at K > 1 sentences per image, and that is counted.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode

from rsrefseg.bench.inference import example_images, inference_call
from rsrefseg.bench.loader import loader_call, on_disk_data, train_loader
from rsrefseg.bench.memory import memory_method, peak_memory, resident_bytes
from rsrefseg.bench.mfu import Peak, device_peak, mfu
from rsrefseg.bench.paths import PATHS, PathSettings, apply_overrides
from rsrefseg.bench.timing import Timing, time_calls
from rsrefseg.bench.training import training_batch, training_step_call
from rsrefseg.config.build import build_module
from rsrefseg.errors import ConfigError
from rsrefseg.training.module import RefSegModule

log = logging.getLogger(__name__)

SCHEMA = "rsrefseg-bench/1"
#: the fast-path switches of the config tree; the report says which this composition has
SWITCHES = (
    "model.sam.fused_attention",
    "model.compile",
    "model.activation_checkpointing",
    "data.group_sentences",
)


@dataclass(frozen=True)
class Settings:
    """The ``bench`` node, with ``quick`` applied."""

    device: str
    threads: int | None
    warmup: int
    repeats: int
    peak_tflops: float | None
    memory: bool
    inference: list[tuple[int, int]]
    training: list[tuple[int, int]]
    loader: Mapping[str, Any]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        node = cfg.bench
        if cfg.get("quick"):
            node = OmegaConf.merge(node, cfg.bench_quick)
        plain = OmegaConf.to_container(node, resolve=True)

        def points(section: str) -> list[tuple[int, int]]:
            part = plain[section]
            if not part.get("enabled", True):
                return []
            sizes, per_image = part["batch_sizes"], part["sentences_per_image"]
            bad = [v for v in [*sizes, *per_image] if not isinstance(v, int) or v < 1]
            if bad:
                raise ConfigError(
                    f"bench.{section}: batch sizes and sentences per image must be >= 1, got {bad}"
                )
            return [(b, k) for b in sizes for k in per_image]

        return cls(
            device=str(plain["device"]),
            threads=plain.get("threads"),
            warmup=int(plain["warmup"]),
            repeats=int(plain["repeats"]),
            peak_tflops=plain.get("peak_tflops"),
            memory=bool(plain["memory"]),
            inference=points("inference"),
            training=points("training"),
            loader=plain["loader"],
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"bench.device={name!r} but no CUDA device is available; use bench.device=cpu")
    return device


def device_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def build_on(cfg: DictConfig, device: torch.device) -> RefSegModule:
    """The run's module (network, loss, optimizer factory) built directly on ``device``."""
    cfg = cfg.copy()
    clip_model = OmegaConf.select(cfg, "model.clip.model")
    if device.type == "cuda" and clip_model is not None and "device" not in clip_model:
        # open_clip initialises where it is told (a 1.1 B model: seconds on a GPU, a minute on CPU)
        with open_dict(clip_model):
            clip_model.device = str(device)
    with torch.device(device):
        module = build_module(cfg, None)
    return module.to(device)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts in one call of ``fn`` (autograd must be on)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _measure(
    fn: Callable[[], Any], settings: Settings, device: torch.device, resident: Callable[[], int]
) -> dict[str, Any]:
    timing: Timing = time_calls(fn, warmup=settings.warmup, repeats=settings.repeats, device=device)
    memory = peak_memory(fn, device, resident()) if settings.memory else None
    return {**timing.as_dict(), "peak_memory_bytes": memory}


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _path_run(
    cfg: DictConfig,
    path: PathSettings,
    settings: Settings,
    device: torch.device,
    count_for: list[PathSettings],
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Measure inference and training for one path; count FLOPs for the layouts of ``count_for``.

    Returns:
        (measurements by point key, FLOPs per call by point key and path name).
    """
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    module = build_on(cfg, device)
    net = module.net
    found: dict[str, dict] = {}
    flops: dict[str, dict] = {}
    net.eval()
    for n, k in settings.inference:
        images = example_images(net, n, device, seed)
        log.info("%s path: inference, %d images × %d sentences", path.name, n, k)
        found[f"inference/{n}/{k}"] = _measure(
            inference_call(net, images, k, path),
            settings,
            device,
            lambda: resident_bytes([net]) + _bytes(images),  # noqa: B023
        )
        for other in count_for:
            # FLOPs are linear in the images at a fixed K: count one image, scale (cheap at batch 64)
            one = inference_call(net, images[:1], k, other, grad=True)
            flops.setdefault(f"inference/{n}/{k}", {})[other.name] = counted_flops(one) * n
        del images
    if settings.training:
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = module.optimizer_factory(params)
        for b, k in settings.training:
            images, masks = training_batch(module, b, k, device, seed)
            log.info("%s path: training, batch %d, %d sentences per image", path.name, b, k)
            step = training_step_call(module, optimizer, images, masks, k, path)
            found[f"training/{b}/{k}"] = _measure(
                step,
                settings,
                device,
                lambda: resident_bytes([module], optimizer) + _bytes(images) + _bytes(masks),  # noqa: B023
            )
            for other in count_for:
                one = training_step_call(module, None, images[:1], masks[:k], k, other)
                flops.setdefault(f"training/{b}/{k}", {})[other.name] = counted_flops(one) * (b // k)
            del images, masks
        del optimizer
    compiled = getattr(net, "compiled_parts", None) or {}
    path.compile_first_call_s = {name: part.first_call_seconds for name, part in compiled.items()}
    return found, flops


def _loader_run(
    cfg: DictConfig, paths: Mapping[str, PathSettings], settings: Settings, device: torch.device
) -> tuple[list[dict], str | None]:
    part = settings.loader
    if not part.get("enabled", True):
        return [], None
    batch = int(part.get("batch_size") or (settings.training[0][0] if settings.training else 8))
    batches = int(part["batches_per_repeat"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsrefseg-bench-") as work:
        # at least two calls' worth: an epoch ending inside a call costs what it costs in training
        samples = max(int(part["samples"]), 2 * batch * batches)
        data_cfg, described = on_disk_data(
            cfg, Path(work), samples=samples, image_size=part.get("image_size")
        )
        found: dict[str, Any] = {}
        workers: dict[str, int] = {}
        for name, path in paths.items():
            path_cfg = apply_overrides(OmegaConf.create({"data": data_cfg}), path)[0]
            if part.get("num_workers") is not None and name == "fast":
                path_cfg.data.num_workers = int(part["num_workers"])
            workers[name] = int(path_cfg.data.num_workers)
            datamodule, loader = train_loader(path_cfg.data, batch)
            call = loader_call(loader, batches, device)
            log.info("%s path: data loader, batch %d, %d workers", name, batch, workers[name])
            timing = time_calls(call, warmup=settings.warmup, repeats=settings.repeats, device=device)
            found[name] = {**timing.as_dict(), "peak_memory_bytes": None}
            found[name]["samples_per_s"] = batch * batches / timing.median_s
            del loader, datamodule
        rows.append(
            {
                "batch_size": batch,
                "batches_per_call": batches,
                "num_workers": workers,
                **{name: found[name] for name in paths},
                "ratio": {"samples_per_s": found["fast"]["samples_per_s"] / found["stock"]["samples_per_s"]},
            }
        )
    return rows, described


def _ratio(fast: float | None, stock: float | None) -> float | None:
    if fast is None or stock is None or stock == 0:
        return None
    return fast / stock


def _rows(
    found: Mapping[str, Mapping[str, dict]],
    flops: Mapping[str, Mapping[str, int]],
    peak: Peak,
    settings: Settings,
) -> tuple[list[dict], list[dict]]:
    inference, training = [], []
    for n, k in settings.inference:
        key = f"inference/{n}/{k}"
        row: dict[str, Any] = {"batch_size": n, "sentences_per_image": k, "sentences": n * k}
        for name in PATHS:
            m = dict(found[name][key])
            m["images_per_s"] = n / m["median_s"]
            m["sentences_per_s"] = n * k / m["median_s"]
            m["flops_per_call"] = flops[key][name]
            m["mfu"] = mfu(m["flops_per_call"], m["median_s"], peak)
            row[name] = m
        row["ratio"] = {
            f: _ratio(row["fast"][f], row["stock"][f])
            for f in ("images_per_s", "sentences_per_s", "peak_memory_bytes", "mfu")
        }
        inference.append(row)
    for b, k in settings.training:
        key = f"training/{b}/{k}"
        row = {"batch_size": b, "sentences_per_image": k, "images": b // k}
        for name in PATHS:
            m = dict(found[name][key])
            m["samples_per_s"] = b / m["median_s"]
            m["flops_per_call"] = flops[key][name]
            m["mfu"] = mfu(m["flops_per_call"], m["median_s"], peak)
            row[name] = m
        row["ratio"] = {
            f: _ratio(row["fast"][f], row["stock"][f]) for f in ("samples_per_s", "peak_memory_bytes", "mfu")
        }
        training.append(row)
    return inference, training


def _switches(cfg: DictConfig, paths: Mapping[str, PathSettings]) -> dict[str, Any]:
    """Each fast-path switch: absent from this composition, or its value on each path."""
    out: dict[str, Any] = {}
    for key in SWITCHES:
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            out[key] = "absent"
            continue
        out[key] = {
            name: OmegaConf.select(apply_overrides(cfg, PathSettings(name, overrides=p.overrides))[0], key)
            for name, p in paths.items()
        }
    return out


def run_benchmark(cfg: DictConfig, *, name: str = "bench", composition: str = "") -> dict[str, Any]:
    """Measure ``cfg`` (a composed ``bench`` config): the report written as JSON (schema in
    :mod:`rsrefseg.bench.report`)."""
    start = time.perf_counter()
    settings = Settings.from_config(cfg)
    device = resolve_device(settings.device)
    if settings.threads is not None:
        if settings.threads < 1:
            raise ConfigError(
                f"bench.threads={settings.threads} must be >= 1, or null (as the process has it)"
            )
        torch.set_num_threads(int(settings.threads))
    peak = device_peak(device, settings.peak_tflops)
    paths = {p: PathSettings.from_config(p, cfg.bench.paths[p]) for p in PATHS}
    path_cfgs = {}
    for p, path in paths.items():
        path_cfgs[p], path.applied, path.skipped = apply_overrides(cfg, path)
    found: dict[str, dict] = {}
    flops: dict[str, dict] = {}
    for p in PATHS:
        count_for = list(paths.values()) if p == "stock" else []
        found[p], counted = _path_run(path_cfgs[p], paths[p], settings, device, count_for)
        flops.update(counted)
        _free(device)  # this path's network is gone: the next one's peak memory is its own
    inference, training = _rows(found, flops, peak, settings)
    loader, dataset = _loader_run(cfg, paths, settings, device)
    return {
        "schema": SCHEMA,
        "name": name,
        "composition": composition or "model",
        "finetune": str(OmegaConf.select(cfg, "model.finetune")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(cfg.get("quick")),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "memory_method": memory_method(device) if settings.memory else None,
        "flops_method": "torch.utils.flop_counter on the stock path's network, one image scaled to the batch",
        "peak_flops_per_s": peak.flops_per_s,
        "peak_source": peak.source,
        "switches": _switches(cfg, paths),
        "paths": {p: s.describe(device) for p, s in paths.items()},
        "loader_dataset": dataset,
        "inference": inference,
        "training": training,
        "loader": loader,
        "wall_s": time.perf_counter() - start,
    }
