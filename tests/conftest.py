"""Shared fixtures: configs composed the way the entry points compose them, tiny networks built from them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rsrefseg.config.build import CONFIG_DIR, build_module

torch.set_flush_denormal(True)

#: Marks a test that submits jobs to a real SLURM cluster (``sbatch`` on PATH); CI starts a one-node cluster.
requires_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None,
    reason="needs a SLURM cluster: `sbatch` is not on PATH (CI starts one with slurm-single-node)",
)


@pytest.fixture
def slurm_cluster() -> str:
    """Skip unless a SLURM cluster answers; return the name of its default partition."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("needs a SLURM cluster: `sbatch` is not on PATH (CI starts one with slurm-single-node)")
    probe = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"needs a SLURM cluster: `sinfo` failed ({probe.stderr.strip()})")
    partitions = [line.strip() for line in probe.stdout.splitlines() if line.strip()]
    default = next((p for p in partitions if p.endswith("*")), partitions[0] if partitions else "")
    return default.rstrip("*")


def compose_config(
    name: str = "train", overrides: list[str] | None = None, *, hydra_node: bool = False
) -> DictConfig:
    """Compose a primary config (``train`` / ``eval``) with overrides, as Hydra's CLI would.

    Outside a Hydra run there is no run folder, so ``paths.output_dir`` points at a temporary one.
    ``hydra_node=True`` keeps the ``hydra`` node (e.g. ``hydra.runtime.choices``: which option of
    each config group was picked).
    """
    overrides = [f"paths.output_dir={tempfile.mkdtemp(prefix='rsrefseg-')}", *(overrides or [])]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra_node)


#: groups whose options are selected as `<group>=<option>` on the command line
CONFIG_GROUPS = [
    "data",
    "model",
    "model/clip",
    "model/prompter",
    "model/sam",
    "model/clip/scale",
    "loss",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "experiment",
]


def group_options(group: str) -> list[str]:
    """The options of a config group (its YAML files; bases in sub-folders are not options)."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def build_tiny_net(overrides: list[str] | None = None, seed: int = 0):
    """The default run's network (tiny CLIP, cascaded prompter, tiny SAM), random init."""
    torch.manual_seed(seed)
    return instantiate(compose_config("train", overrides).model, _convert_="partial")


@pytest.fixture
def tiny_net():
    return build_tiny_net()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the default tiny network as ``rsrefseg-train`` writes it (random init, not trained).

    What prediction reads from a checkpoint does not depend on training; notebooks/ and the slow
    tests also run on trained ones.
    """
    cfg = compose_config("train")
    torch.manual_seed(0)
    module = build_module(cfg, None, run_config=OmegaConf.to_container(cfg, resolve=True))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.ckpt"
    torch.save(checkpoint, path)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gloo_rank(worker: Callable[[int, int, str], None], rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        worker(rank, 2, out_dir)
    finally:
        dist.destroy_process_group()


def run_on_two_gloo_ranks(worker: Callable[[int, int, str], None], out_dir: Path) -> list:
    """Run ``worker(rank, world_size, out_dir)`` on two gloo ranks; return what each saved as ``<rank>.pt``.

    Rank 0 runs in this (already warm) process and only rank 1 is spawned: a spawned child re-imports
    torch and torchmetrics, which dominates such a test's run time. ``worker`` must be a module-level
    function (it is pickled for the child) and save its result with ``torch.save``.
    """
    port = _free_port()
    child = mp.get_context("spawn").Process(target=_gloo_rank, args=(worker, 1, port, str(out_dir)))
    child.start()
    try:
        _gloo_rank(worker, 0, port, str(out_dir))
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.terminate()
    assert child.exitcode == 0, f"rank 1 exited with {child.exitcode}"
    return [torch.load(out_dir / f"{rank}.pt") for rank in range(2)]
