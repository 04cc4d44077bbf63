"""`rsrefseg-aggregate` on hand-made sweep folders with known values, and once on a real tiny multirun."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rsrefseg.cli.aggregate import EXIT_INCOMPLETE, main
from rsrefseg.errors import UserError
from rsrefseg.evaluation.sweep.grid import expected_jobs
from rsrefseg.evaluation.sweep.paired import bootstrap_interval, find_reference
from rsrefseg.evaluation.sweep.report import Options, aggregate, markdown_report, write_outputs
from rsrefseg.evaluation.sweep.settings import setting_of

BIN = Path(sys.executable).parent
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
GROUPS = ("category", "attribute", "relation")
N_SAMPLES = 300
SEEDS = (1, 2, 3)
#: true per-sample shift of each prompter's IoU against cascaded, per expression type (fractions)
SHIFTS = {
    "cascaded": {"category": 0.0, "attribute": 0.0, "relation": 0.0},
    "first_order": {"category": 0.06, "attribute": 0.06, "relation": -0.03},
    "no_dense": {"category": 0.0, "attribute": 0.0, "relation": 0.0},
}

# --------------------------------------------------------------------------------------------------
# Hand-made sweep folders
# --------------------------------------------------------------------------------------------------


def write_sweep(
    path: Path,
    *,
    task: Sequence[str],
    params: Mapping[str, str] | None = None,
    sweeper: Mapping[str, object] | None = None,
) -> Path:
    """A multirun folder's ``multirun.yaml`` (only the nodes the aggregation reads)."""
    sweeper = sweeper or {"_target_": BASIC_SWEEPER, "max_batch_size": None, "params": params}
    config = {
        "hydra": {
            "sweeper": dict(sweeper),
            "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(task)},
        },
        "seed": 42,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "multirun.yaml").write_text(yaml.safe_dump(config))
    return path


def metrics_of(samples: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """metrics.json's test metrics from per-sample IoUs (gIoU exactly as the per-sample mean)."""
    iou = np.array([v for _, v in samples.values()])
    metrics = {"gIoU": iou.mean() * 100, "cIoU": iou.mean() * 100 - 1.0}
    metrics |= {f"Pr@{t}": (iou > t).mean() * 100 for t in (0.5, 0.6, 0.7, 0.8, 0.9)}
    for group in GROUPS:
        metrics[f"gIoU/{group}"] = np.mean([v for g, v in samples.values() if g == group]) * 100
    return {k: float(v) for k, v in metrics.items()}


def write_job(
    sweep: Path,
    num: int,
    overrides: Sequence[str],
    *,
    seed: int,
    samples: Mapping[str, tuple[str, float]] | None = None,
    metrics: Mapping[str, float] | None = None,
    status: Mapping[str, object] | None = None,
    choices: Mapping[str, str] | None = None,
) -> Path:
    """One job folder: .hydra/overrides.yaml, status.json, metrics.json, samples_test.csv, train.log."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    runtime = {"choices": dict(choices or {"model/prompter": "cascaded"})}
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"job": {"id": str(num)}, "runtime": runtime}})
    )
    (job / "train.log").write_text("log\n")
    (job / "status.json").write_text(json.dumps(status or {"status": "completed"}))
    if samples is not None:
        rows = ["sample_id,group,iou,intersection,union"]
        rows += [f"{sid},{group},{iou:.6f},1,1" for sid, (group, iou) in sorted(samples.items())]
        (job / "samples_test.csv").write_text("\n".join(rows) + "\n")
        metrics = metrics or metrics_of(samples)
    if metrics is not None:
        payload = {"seed": seed, "overrides": list(overrides), "metrics": {"test": dict(metrics)}}
        (job / "metrics.json").write_text(json.dumps(payload))
    return job


def known_samples(prompter: str, seed: int) -> dict[str, tuple[str, float]]:
    """Per-sample IoU = a shared base + the prompter's true shift for the type + seed noise (6 decimals).

    The noise has mean 0 within each type, so the true Δ of each type is exactly its shift.
    """
    base = np.random.default_rng(1234).uniform(0.2, 0.7, N_SAMPLES)
    noise = np.random.default_rng([seed, list(SHIFTS).index(prompter)]).normal(0.0, 0.03, N_SAMPLES)
    groups = np.array([GROUPS[i % len(GROUPS)] for i in range(N_SAMPLES)])
    for group in GROUPS:
        noise[groups == group] -= noise[groups == group].mean()
    iou = np.clip(base + np.array([SHIFTS[prompter][g] for g in groups]) + noise, 0.0, 1.0)
    return {f"s{i:04d}": (str(groups[i]), round(float(iou[i]), 6)) for i in range(N_SAMPLES)}


def prompter_sweep(path: Path, prompters: Sequence[str] = ("cascaded", "first_order")) -> Path:
    """A complete sweep: model/prompter=<prompters> × seed=1,2,3 with known per-sample IoUs."""
    sweep = write_sweep(
        path,
        task=[f"model/prompter={','.join(prompters)}", "seed=1,2,3", "trainer.max_steps=4", "logger=none"],
    )
    num = 0
    for prompter in prompters:
        for seed in SEEDS:
            overrides = [f"model/prompter={prompter}", f"seed={seed}", "trainer.max_steps=4", "logger=none"]
            write_job(sweep, num, overrides, seed=seed, samples=known_samples(prompter, seed))
            num += 1
    return sweep


def options(**changes: object) -> Options:
    return Options(**{"reference": ("model/prompter=cascaded",), "resamples": 2000, **changes})


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table under ``heading`` (header row included, separator left out)."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|-:"):
            table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def test_table_means_stds_and_seed_counts(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", task=["model/prompter=cascaded,first_order", "seed=1,2,3"])
    giou = {"cascaded": (40.0, 42.0, 44.0), "first_order": (30.0, 30.0, 33.0)}
    num = 0
    for prompter, values in giou.items():
        for seed, value in zip(SEEDS, values, strict=True):
            metrics = {"gIoU": value, "cIoU": value + 1, "Pr@0.5": 2 * value, "gIoU/relation": value - seed}
            write_job(sweep, num, [f"model/prompter={prompter}", f"seed={seed}"], seed=seed, metrics=metrics)
            num += 1

    result = aggregate([sweep], Options())

    cascaded, first_order = result.rows
    assert (cascaded.label, cascaded.n, cascaded.seeds) == ("model/prompter=cascaded", 3, (1, 2, 3))
    assert cascaded.stats["gIoU"].mean == pytest.approx(42.0)
    assert cascaded.stats["gIoU"].std == pytest.approx(2.0)  # sample std (ddof=1) of 40, 42, 44
    assert cascaded.stats["Pr@0.5"].mean == pytest.approx(84.0)
    assert cascaded.stats["gIoU/relation"].mean == pytest.approx(40.0)  # 39, 40, 41
    assert first_order.stats["gIoU"].mean == pytest.approx(31.0)
    assert first_order.stats["gIoU"].std == pytest.approx(np.std([30, 30, 33], ddof=1))
    assert result.columns[:7] == ["Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "cIoU", "gIoU"]
    assert result.columns[7:] == ["gIoU/relation"]
    report = markdown_report(result)
    assert (
        "| model/prompter=cascaded | 3 | 84.00 ± 4.00 | – | – | – | – | 43.00 ± 2.00 | 42.00 ± 2.00 |"
        in report
    )
    assert result.complete


def test_the_seed_and_logistic_overrides_are_not_part_of_a_setting():
    overrides = [
        "seed=3",
        "logger=wandb",
        "logger.wandb.project=x",
        "hydra.launcher.timeout_min=60",
        "+paths.log_dir=/scratch",
        "task_name=train",
        # what a job resumed by hand adds (ckpt_path=last and the resume options)
        "ckpt_path=last",
        "callbacks.last_checkpoint.every_n_steps=50",
        "trainer.devices=2",
        "model/prompter=first_order",
    ]
    assert setting_of(overrides) == ("model/prompter=first_order", "trainer.devices=2")
    assert setting_of(overrides, ignore=["trainer.dev*"]) == ("model/prompter=first_order",)
    # the same overrides in another order are the same setting
    assert setting_of(["b=1", "a=2"]) == setting_of(["a=2", "b=1"])


def test_two_jobs_of_one_setting_and_seed_are_refused(tmp_path):
    first = prompter_sweep(tmp_path / "a")
    second = prompter_sweep(tmp_path / "b")
    aggregate([first, first], options())  # the same folder twice counts once
    with pytest.raises(UserError, match=r"a/0 and .*b/0 are the same setting with the same seed \(seed=1\)"):
        aggregate([first, second], options())


# --------------------------------------------------------------------------------------------------
# The paired comparison
# --------------------------------------------------------------------------------------------------


def test_paired_delta_and_interval_cover_the_true_shift(tmp_path):
    sweep = prompter_sweep(tmp_path / "sweep", ("cascaded", "first_order", "no_dense"))

    result = aggregate([sweep], options(resamples=4000))

    assert result.reference is result.rows[0]
    by_setting = {c.row.label: {d.group: d for d in c.deltas} for c in result.comparisons}
    first_order = by_setting["model/prompter=first_order"]
    assert list(first_order) == ["all", "category", "attribute", "relation"]
    true_shift = {g: SHIFTS["first_order"][g] * 100 for g in GROUPS}
    true_shift["all"] = np.mean(list(true_shift.values()))  # 100 samples of each type
    for group, delta in first_order.items():
        assert delta.delta == pytest.approx(true_shift[group], abs=1e-4)
        assert delta.low < true_shift[group] < delta.high, (group, delta)
        # the width comes from the noise (σ 0.03 per seed, 3 seeds a side), not from the base IoU's spread
        assert 0.2 < delta.high - delta.low < 1.5
        assert delta.excludes_zero
        assert delta.n_samples == (N_SAMPLES if group == "all" else N_SAMPLES // 3)
    no_dense = by_setting["model/prompter=no_dense"]["all"]
    assert no_dense.low < 0 < no_dense.high and not no_dense.excludes_zero
    reference = by_setting["model/prompter=cascaded"]["all"]
    assert (reference.delta, reference.low, reference.high) == (0.0, 0.0, 0.0)

    # Δ is the mean paired difference of the seed-pooled IoUs = the difference of the pooled gIoUs
    pooled = {
        p: np.mean([[iou for _, (_, iou) in sorted(known_samples(p, s).items())] for s in SEEDS], axis=0)
        for p in ("cascaded", "first_order")
    }
    assert first_order["all"].delta == pytest.approx(
        (pooled["first_order"] - pooled["cascaded"]).mean() * 100
    )
    table = {row.label: row.stats["gIoU"].mean for row in result.rows}
    assert first_order["all"].delta == pytest.approx(
        table["model/prompter=first_order"] - table["model/prompter=cascaded"], abs=1e-9
    )


def test_bootstrap_interval_has_the_width_of_the_standard_error():
    differences = np.random.default_rng(0).normal(1.0, 2.0, 400)
    low, high = bootstrap_interval(differences, resamples=20_000, confidence=0.95, seed=0)
    half_width = 1.96 * differences.std(ddof=1) / np.sqrt(differences.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.08)
    assert (low + high) / 2 == pytest.approx(differences.mean(), abs=0.03)
    assert bootstrap_interval(differences, resamples=20_000, confidence=0.95, seed=0) == (low, high)
    narrow = bootstrap_interval(differences, resamples=20_000, confidence=0.5, seed=0)
    assert low < narrow[0] < narrow[1] < high


def test_a_sample_missing_from_one_side_is_named_not_dropped(tmp_path):
    sweep = prompter_sweep(tmp_path / "sweep")
    file = sweep / "4" / "samples_test.csv"  # first_order, seed 2
    lines = file.read_text().splitlines()
    file.write_text("\n".join(line for line in lines if not line.startswith("s0007,")) + "\n")

    result = aggregate([sweep], options())

    (problem,) = result.not_compared
    assert problem.row.label == "model/prompter=first_order"
    assert "'s0007'" in problem.problem and str(file) in problem.problem
    assert not result.complete
    report = markdown_report(result)
    assert "not compared (see below)" in report and "s0007" in report


def test_the_reference_is_found_by_override_or_by_the_composed_choice(tmp_path):
    rows = aggregate([prompter_sweep(tmp_path / "sweep")], Options()).rows
    assert find_reference(rows, ["model/prompter=first_order"]).label == "model/prompter=first_order"
    with pytest.raises(
        UserError, match=r"model/prompter=sam: no setting has it \(settings: model/prompter=cascaded"
    ):
        find_reference(rows, ["model/prompter=sam"])
    with pytest.raises(UserError, match="2 settings have it"):
        find_reference(rows, ["trainer.max_steps=4"])

    # a setting that runs the default prompter without naming it
    sweep = write_sweep(tmp_path / "default", task=["optimizer.lr=1e-4,3e-4"])
    write_job(sweep, 0, ["optimizer.lr=1e-4"], seed=42, metrics={"gIoU": 1.0})
    write_job(
        sweep, 1, ["optimizer.lr=3e-4"], seed=42, metrics={"gIoU": 2.0}, choices={"model/prompter": "x"}
    )
    rows = aggregate([sweep], Options()).rows
    assert find_reference(rows, ["model/prompter=cascaded"]).label == "optimizer.lr=1e-4"
    assert find_reference(rows, ["optimizer.lr=0.0003"]).label == "optimizer.lr=3e-4"  # the same number


# --------------------------------------------------------------------------------------------------
# Failed and missing jobs
# --------------------------------------------------------------------------------------------------


def broken_sweep(path: Path) -> tuple[Path, Path, Path, int]:
    """model/prompter=cascaded,first_order × seed=1,2: job 0 finished, 1 failed, 2 never started, 3 killed.

    Returns:
        The sweep, the failed and the killed job folders, and the killed job's (gone) process id.
    """
    sweep = write_sweep(
        path, params={"model/prompter": "cascaded,first_order"}, task=["seed=1,2", "logger=none"]
    )
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs: the job was killed without a word
    samples = known_samples("cascaded", 1)
    write_job(sweep, 0, ["model/prompter=cascaded", "seed=1", "logger=none"], seed=1, samples=samples)
    failed = write_job(
        sweep,
        1,
        ["model/prompter=cascaded", "seed=2", "logger=none"],
        seed=2,
        status={"status": "failed", "error": "RuntimeError: out of memory"},
    )
    killed = write_job(
        sweep,
        3,
        ["model/prompter=first_order", "seed=2", "logger=none"],
        seed=2,
        status={"status": "running", "pid": gone.pid, "host": socket.gethostname()},
    )
    return sweep, failed, killed, gone.pid


def test_failed_killed_and_missing_jobs_are_listed(tmp_path):
    sweep, failed, killed, pid = broken_sweep(tmp_path / "sweep")

    result = aggregate([sweep], options())

    assert [(job.path, job.status) for job in result.failed] == [(failed, "failed"), (killed, "killed")]
    assert result.failed[0].error == "RuntimeError: out of memory"
    assert failed / "train.log" in result.failed[0].logs
    (missing,) = result.missing
    assert (missing.num, missing.overrides) == (2, ("model/prompter=first_order", "seed=1", "logger=none"))
    assert not result.complete
    report = markdown_report(result)
    assert "## Failed or unfinished jobs (2)" in report
    assert "RuntimeError: out of memory" in report and str(failed / "train.log") in report
    assert f"process {pid} is gone" in report
    assert "## Missing jobs (1)" in report and "| #2 | model/prompter=first_order | 1 |" in report

    out = tmp_path / "out"
    assert main([str(sweep), "--reference", "model/prompter=cascaded", "--out", str(out)]) == EXIT_INCOMPLETE
    with (out / "jobs.csv").open() as handle:
        jobs = {row["job"]: row for row in csv.DictReader(handle)}
    assert [jobs[str(sweep / n)]["status"] for n in "0123"] == ["completed", "failed", "missing", "killed"]
    assert [jobs[str(sweep / n)]["used"] for n in "0123"] == ["yes", "no", "no", "no"]


def test_a_rerun_in_another_sweep_replaces_a_failed_or_missing_job(tmp_path):
    sweep, failed, killed, _ = broken_sweep(tmp_path / "sweep")
    rerun = write_sweep(tmp_path / "rerun", task=["model/prompter=first_order", "seed=1,2", "logger=csv"])
    for num, seed in enumerate((1, 2)):
        overrides = [
            "model/prompter=first_order",
            f"seed={seed}",
            "logger=csv",
        ]  # another logger: same setting
        write_job(rerun, num, overrides, seed=seed, samples=known_samples("first_order", seed))

    result = aggregate([sweep, rerun], options())

    assert [job.path for job in result.failed] == [failed]  # cascaded seed 2 was not rerun
    assert not result.missing
    assert result.reruns == {sweep / "2": rerun / "0", killed: rerun / "1"}
    assert any(f"{killed} did not finish" in note and str(rerun / "1") in note for note in result.notes)
    assert [(row.label, row.n) for row in result.rows] == [
        ("model/prompter=cascaded", 1),
        ("model/prompter=first_order", 2),
    ]


def test_a_job_without_metrics_and_a_sweep_without_finished_jobs(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", task=["seed=1,2"])
    write_job(sweep, 0, ["seed=1"], seed=1)  # completed, but no metrics.json
    with pytest.raises(UserError, match=r"no finished job with test metrics .*0: completed, no metrics.json"):
        aggregate([sweep], Options())
    write_job(sweep, 1, ["seed=2"], seed=2, metrics={"gIoU": 5.0})
    (sweep / "2").mkdir()  # a job folder without .hydra/
    result = aggregate([sweep], Options())
    assert [job.problem for job in result.failed] == [
        "completed, no metrics.json",
        "no .hydra/overrides.yaml",
    ]
    assert [row.n for row in result.rows] == [1]


def test_an_optuna_search_folder_is_read_with_its_missing_trials(tmp_path):
    sweeper = {
        "_target_": OPTUNA_SWEEPER,
        "n_trials": 3,
        "sampler": {"_target_": "optuna.samplers.TPESampler"},
    }
    sweep = write_sweep(tmp_path / "search", task=["trainer.max_steps=4"], sweeper=sweeper)
    write_job(sweep, 0, ["optimizer.lr=0.0003", "trainer.max_steps=4"], seed=42, metrics={"gIoU": 3.0})
    write_job(sweep, 1, ["optimizer.lr=0.001", "trainer.max_steps=4"], seed=42, metrics={"gIoU": 2.0})
    best = {"name": "optuna", "best_params": {"optimizer.lr": 0.0003}, "best_value": 3.0}
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(best))

    result = aggregate([sweep], Options())

    assert [row.label for row in result.rows] == ["optimizer.lr=0.0003", "optimizer.lr=0.001"]
    assert [(m.num, m.overrides) for m in result.missing] == [(2, None)]
    assert any("optuna's best trial: optimizer.lr=0.0003 (objective 3.0)" in note for note in result.notes)


def test_the_grid_is_expanded_as_hydra_expands_it():
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": BASIC_SWEEPER,
                "params": {"model/prompter": "cascaded,first_order", "lr": 1e-4},
            },
            "overrides": {"task": ["seed=range(1,4)", "data.sizes={train:64,val:8,test:8}", "lr=3e-4,1e-3"]},
        }
    }
    jobs = expected_jobs(multirun)
    assert len(jobs) == 2 * 3 * 2  # the command line replaces the config's lr
    assert jobs[0].overrides == (
        "model/prompter=cascaded",
        "lr=0.0003",  # Hydra writes the number, not the typed text, into the job's overrides
        "seed=1",
        "data.sizes={train:64,val:8,test:8}",
    )
    assert jobs[-1].overrides == (
        "model/prompter=first_order",
        "lr=0.001",
        "seed=3",
        "data.sizes={train:64,val:8,test:8}",
    )


# --------------------------------------------------------------------------------------------------
# The written files
# --------------------------------------------------------------------------------------------------


def test_the_csv_and_markdown_tables_agree_and_the_png_is_valid(tmp_path):
    sweep = prompter_sweep(tmp_path / "sweep")
    result = aggregate([sweep], options())
    paths = write_outputs(result, tmp_path / "out")

    with paths["table"].open() as handle:
        table = list(csv.DictReader(handle))
    markdown = markdown_rows(paths["report"].read_text(), "## Ablation table")
    header, *rows = markdown
    assert header[:2] == ["setting", "n"] and header[2:] == result.columns
    assert [row[0] for row in rows] == [line["setting"] for line in table]
    for cells, line in zip(rows, table, strict=True):
        assert cells[1] == line["n"] == "3" and line["seeds"] == "1;2;3"
        for name, cell in zip(header[2:], cells[2:], strict=True):
            mean, std = float(line[f"{name}_mean"]), float(line[f"{name}_std"])
            assert cell == f"{mean:.2f} ± {std:.2f}", name

    with paths["paired"].open() as handle:
        paired = {(row["setting"], row["group"]): row for row in csv.DictReader(handle)}
    delta = {c.row.label: c.deltas[0] for c in result.comparisons}["model/prompter=first_order"]
    line = paired[("model/prompter=first_order", "all")]
    assert float(line["delta"]) == pytest.approx(delta.delta, abs=1e-6)
    assert float(line["low"]) == pytest.approx(delta.low, abs=1e-6)
    cell = f"{delta.delta:+.2f} [{delta.low:+.2f}, {delta.high:+.2f}]*"
    assert cell in paths["report"].read_text()

    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["plot"]) as image:
        image.verify()
        assert image.width > 500 and image.height > 200


def test_the_output_folder_is_never_a_job_folder(tmp_path):
    sweep = prompter_sweep(tmp_path / "sweep")
    result = aggregate([sweep], options())
    with pytest.raises(UserError, match="inside the job folder"):
        write_outputs(result, sweep / "0" / "aggregate")
    assert not (sweep / "0" / "aggregate").exists()


def test_cli_end_to_end(tmp_path):
    sweep = prompter_sweep(tmp_path / "sweep")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [str(BIN / "rsrefseg-aggregate"), str(sweep), "--reference", "model/prompter=cascaded"]
    result = subprocess.run(
        [*command, "--bootstrap", "1000", "--seed", "3"], capture_output=True, text=True, env=env, timeout=120
    )

    assert result.returncode == 0, result.stderr
    out = sweep / "aggregate"
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.csv",
        "aggregate.md",
        "gIoU.png",
        "jobs.csv",
        "paired.csv",
    ]
    assert "| model/prompter=first_order | 3 |" in result.stdout
    assert "1000 resamples, seed 3" in result.stdout
    assert str(out / "aggregate.md") in result.stdout
    assert re.search(
        r"\| model/prompter=first_order \| \+\d\.\d\d \[\+\d\.\d\d, \+\d\.\d\d\]\* \|", result.stdout
    )


def test_cli_errors_name_the_problem(tmp_path, capsys):
    sweep = str(prompter_sweep(tmp_path / "sweep"))
    with pytest.raises(SystemExit) as exit_:
        main([sweep, "--reference", "model/prompter=sam"])
    assert exit_.value.code == 1
    assert (
        "rsrefseg-aggregate: error: --reference model/prompter=sam: no setting has it"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_:
        main([sweep, "--reference", "cascaded"])
    assert exit_.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 1
    assert "nowhere: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_a_real_multirun(tmp_path):
    """Two real jobs (Hydra's basic launcher, ~30 s): nothing missing, the per-sample files pair up."""
    sweep = tmp_path / "multirun"
    train = subprocess.run(
        [
            str(BIN / "rsrefseg-train"),
            "-m",
            "model/prompter=cascaded,first_order",
            "seed=1",
            "data.sizes={train:64,val:8,test:8}",
            "trainer.max_steps=2",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]

    result = aggregate([sweep], options())

    assert result.complete and not result.notes
    assert [row.label for row in result.rows] == ["model/prompter=cascaded", "model/prompter=first_order"]
    assert result.common == ("data.sizes={train:64,val:8,test:8}", "trainer.max_steps=2")
    deltas = {c.row.label: c.deltas for c in result.comparisons}["model/prompter=first_order"]
    assert deltas[0].n_samples == 8
    table = {row.label: row.stats["gIoU"].mean for row in result.rows}
    # samples_test.csv rounds IoU to 6 decimals
    assert deltas[0].delta == pytest.approx(
        table["model/prompter=first_order"] - table["model/prompter=cascaded"], abs=1e-3
    )
