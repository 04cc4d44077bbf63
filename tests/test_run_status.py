"""Run folders say how their run ended; a resume that does not fit names the checkpoint and the difference."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import compose_config
from rsrefseg.training.status import STATUS_FILE, recorded_status

TINY = [
    "logger=none",
    "data.sizes.train=32",
    "data.sizes.val=8",
    "data.sizes.test=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "shuffled_sentence_test=false",
    "trivial_baselines=false",
]


def status(folder: Path) -> dict:
    return json.loads((folder / STATUS_FILE).read_text())


def test_status_is_running_then_completed(tmp_path):
    with recorded_status(tmp_path) as record:
        assert status(tmp_path)["status"] == "running" and "pid" in status(tmp_path)
        record["best_checkpoint"] = "best.ckpt"
    final = status(tmp_path)
    assert final["status"] == "completed" and final["best_checkpoint"] == "best.ckpt" and "finished" in final


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad value"), "failed"),
        (KeyboardInterrupt(), "interrupted"),
        (SystemExit(1), "interrupted"),
    ],
)
def test_status_records_how_a_run_stopped_and_reraises(tmp_path, error, expected):
    with pytest.raises(type(error)), recorded_status(tmp_path):
        raise error
    final = status(tmp_path)
    assert final["status"] == expected and final["error"].startswith(type(error).__name__)
    if expected == "failed":
        assert "bad value" in final["error"] and "ValueError: bad value" in final["traceback"]


def test_other_ranks_write_no_status(tmp_path):
    with recorded_status(tmp_path, enabled=False):
        pass
    assert not (tmp_path / STATUS_FILE).exists()


def test_resume_with_another_network_names_the_file_and_the_difference(tmp_path, caplog):
    from rsrefseg.training.run import train

    overrides = ["trainer.max_steps=1", "trainer.val_check_interval=1", "test_after_fit=false"]
    first = compose_config("train", [*TINY, *overrides, "callbacks.progress_bar.every_n_steps=1"])
    with caplog.at_level(logging.INFO, logger="rsrefseg.training.progress"):
        train(first)
    # stdout is not a terminal here: progress comes as plain log lines
    progress = [r.getMessage() for r in caplog.records if r.name == "rsrefseg.training.progress"]
    assert progress[0].startswith("step 1/1 epoch 0 train/loss ") and "steps/s" in progress[0]
    assert progress[1].startswith("validation at step 1: val/gIoU ")
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file() and status(Path(first.paths.output_dir))["status"] == "completed"

    resumed = compose_config(
        "train", [*TINY, "trainer.max_steps=2", f"ckpt_path={last}", "model.prompter.depths=[1,1,1]"]
    )
    with pytest.raises(ValueError) as error:
        train(resumed)
    message = str(error.value)
    assert f"checkpoint {last} " in message and "this run's network" in message
    assert "model.prompter.depths: checkpoint [2, 2, 2], this run [1, 1, 1]" in message
    final = status(Path(resumed.paths.output_dir))
    assert final["status"] == "failed" and str(last) in final["error"]
