"""sweeps/: every job of every sweep file composes and passes check_config; a tiny sweep and the optuna
search run; a multirun never writes into an earlier sweep's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rsrefseg.config.build import CONFIG_DIR
from rsrefseg.config.schema import check_config

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
SWEEP_FILES = sorted(path.stem for path in SWEEPS.glob("*.yaml"))
TRAIN = [sys.executable, "-m", "rsrefseg.cli.train"]
#: values the paper-scale files leave to the command line
COMMAND_LINE = {"sam": ["sam_weights_dir=/weights/sam"]}
#: every ablation axis of the paper, in a paper-scale and a tiny form
AXES = ["prompter", "clip", "sam", "loss", "lora_rank", "finetune", "hparams"]


@pytest.fixture
def sweep_hydra():
    """Hydra as ``rsrefseg-train --config-dir sweeps`` sets it up (sweeps/ searched before conf/)."""
    search_path = create_config_search_path(CONFIG_DIR)
    search_path.prepend("command-line", f"file://{SWEEPS}")
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
    yield hydra
    # the tests set a job's HydraConfig; a later test in this process must not see it as its own job
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def _compose(hydra: Hydra, name: str, overrides: list[str], mode: RunMode) -> DictConfig:
    return hydra.compose_config(name, overrides, run_mode=mode, with_log_configuration=False)


def _job_overrides(sweep: DictConfig) -> list[list[str]]:
    """The jobs a sweep file launches: the basic sweeper's grid, or one point of the optuna space."""
    params = {str(key): str(value) for key, value in sweep.hydra.sweeper.params.items()}
    if "optuna" in sweep.hydra.sweeper._target_:
        from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

        parser = OverridesParser.create()
        jobs = []
        for corner in range(2):  # the low and the high end of every range / first and last choice
            job = []
            for key, value in params.items():
                distribution = create_optuna_distribution_from_override(
                    parser.parse_override(f"{key}={value}")
                )
                bounds = getattr(distribution, "choices", None) or (distribution.low, distribution.high)
                job.append(f"{key}={bounds[-corner]}")
            jobs.append(job)
        return jobs
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_every_axis_has_a_paper_and_a_tiny_form():
    assert sorted(SWEEP_FILES) == sorted([*AXES, *(f"{axis}_tiny" for axis in AXES)])


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_job_of_a_sweep_composes_and_passes_check_config(sweep_hydra, name, tmp_path):
    extra = [*COMMAND_LINE.get(name, []), f"paths.output_dir={tmp_path}"]
    sweep = _compose(sweep_hydra, name, extra, RunMode.MULTIRUN)
    assert sweep.hydra.mode == RunMode.MULTIRUN, f"{name}: runs as a multirun without -m"
    assert f"/sweeps/{name}/" in sweep.hydra.sweep.dir
    jobs = _job_overrides(sweep)
    is_tiny = name.endswith("_tiny")
    if "optuna" not in sweep.hydra.sweeper._target_:
        assert {override.split("=")[0] for override in jobs[0]} >= {"seed"}, f"{name}: no seeds"
        assert len({job[-1] for job in jobs}) >= 3, f"{name}: fewer than 3 seeds"
    # a job differs from another of its setting by its seed only: compose each setting once (the first seed)
    settings = set()
    for job in [job for job in jobs if job[-1] == jobs[0][-1]] if "seed" in jobs[0][-1] else jobs:
        cfg = _compose(sweep_hydra, name, [*job, *extra], RunMode.RUN)
        HydraConfig.instance().set_config(cfg)  # the job's ${hydra:…} values (sam.yaml's weight file)
        check_config(cfg)
        choices = cfg.hydra.runtime.choices
        assert choices["experiment"] == ("synthetic_cpu" if is_tiny else "rrsisd"), f"{name}: {job}"
        if not is_tiny:
            assert choices["hydra/launcher"] == "slurm"
        else:  # the recipe the README's tiny sweep figures were measured with, not the default run's
            assert (cfg.trainer.max_steps, cfg.data.batch_size) == (600, 16), f"{name}: {job}"
            if "optimizer.lr" not in " ".join(job):
                assert cfg.optimizer.lr == 3.5e-4, f"{name}: {job}"
        setting = {key: _plain(cfg[key]) for key in cfg if key not in ("seed", "hydra", "paths")}
        settings.add(json.dumps(setting, sort_keys=True, default=str))
    # each job of the grid (seed aside) is a different run: the swept keys exist and take effect
    assert len(settings) == len(jobs) // len({job[-1] for job in jobs} if "seed" in jobs[0][-1] else [1])


def test_sam_sweep_loads_each_sam_with_its_own_checkpoint(sweep_hydra):
    sweep = _compose(sweep_hydra, "sam", COMMAND_LINE["sam"], RunMode.MULTIRUN)
    checkpoints = {}
    for job in _job_overrides(sweep):
        cfg = _compose(sweep_hydra, "sam", [*job, *COMMAND_LINE["sam"]], RunMode.RUN)
        HydraConfig.instance().set_config(cfg)
        checkpoints[cfg.hydra.runtime.choices["model/sam"]] = cfg.model.sam.sam.checkpoint
    assert checkpoints["vit_h"] == "/weights/sam/sam_vit_h_4b8939.pth"
    assert checkpoints["hiera_b+"] == "/weights/sam/sam2.1_hiera_base_plus.pt"
    assert len(set(checkpoints.values())) == 7


def _train(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([*TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


TINY_JOB = ["data.sizes={train:64,val:8,test:8}", "trainer.max_steps=2", "logger=none"]


@pytest.mark.slow
def test_tiny_sweep_runs_two_jobs_through_the_local_launcher(tmp_path):
    sweep_dir = tmp_path / "sweep"
    two_jobs = 'hydra.sweeper.params={model/prompter:"cascaded,first_order",seed:"1"}'
    done = _train(
        [
            "--config-dir",
            str(SWEEPS),
            "--config-name",
            "prompter_tiny",
            "hydra/launcher=local",
            f"hydra.sweep.dir={sweep_dir}",
            two_jobs,
            *TINY_JOB,
        ],
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for number, prompter in enumerate(["cascaded", "first_order"]):
        metrics = json.loads((sweep_dir / str(number) / "metrics.json").read_text())
        assert f"model/prompter={prompter}" in metrics["overrides"]
        assert metrics["metrics"]["test"]["num_samples"] == 8


@pytest.mark.slow  # two multiruns (~12 s)
def test_a_sweep_into_a_used_folder_is_refused_and_the_earlier_jobs_stay(tmp_path):
    sweep_dir = tmp_path / "x"
    (sweep_dir / "0").mkdir(parents=True)
    (sweep_dir / "0" / "metrics.json").write_text('{"earlier": true}')
    (sweep_dir / "1").mkdir()
    done = _train(["-m", f"hydra.sweep.dir={sweep_dir}", "seed=1,2", *TINY_JOB], cwd=tmp_path)
    assert done.returncode == 1
    assert f"hydra.sweep.dir={sweep_dir} already holds an earlier sweep (0/, 1/)" in done.stderr
    assert "hydra.sweep.dir=<new folder>" in done.stderr
    assert (sweep_dir / "0" / "metrics.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1"]


@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_writes_the_best(tmp_path):
    sweep_dir = tmp_path / "hparams"
    done = _train(
        [
            "--config-dir",
            str(SWEEPS),
            "--config-name",
            "hparams_tiny",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            *TINY_JOB,
        ],
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(best.best_params) == {"optimizer.lr", "optimizer.weight_decay", "model.lora.r"}
    values = [
        json.loads((sweep_dir / str(n) / "metrics.json").read_text())["selection/val_gIoU"] for n in range(2)
    ]
    assert best.best_value == pytest.approx(max(values))
