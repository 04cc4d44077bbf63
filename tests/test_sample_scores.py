"""Per-sample scores: every test pass writes ``samples_<pass>.csv`` next to ``metrics.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from rsrefseg.evaluation.metrics import ReferringSegmentationMetrics, sample_scores
from rsrefseg.evaluation.results import SAMPLE_COLUMNS, save_sample_scores

TINY = [
    "logger=none",
    "data.sizes.train=32",
    "data.sizes.val=8",
    "data.sizes.test=12",
    "data.batch_size=4",
    "data.eval_batch_size=5",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sample_scores_follow_the_metric_conventions():
    preds = [torch.tensor([[True, False], [True, True]]), torch.zeros(2, 3, dtype=torch.bool)]
    targets = [torch.tensor([[True, True], [False, True]]), torch.zeros(2, 3, dtype=torch.bool)]
    scores = sample_scores(preds, targets)
    assert scores["intersection"].tolist() == [2, 0] and scores["union"].tolist() == [4, 0]
    # an empty target predicted empty scores 1, as in gIoU
    assert scores["iou"].tolist() == [0.5, 1.0]
    metric = ReferringSegmentationMetrics()
    metric.update(preds, targets)
    assert float(metric.compute()["gIoU"]) == pytest.approx(100 * float(scores["iou"].mean()))


def test_training_writes_per_sample_scores_that_add_up_to_the_metrics():
    from rsrefseg.training.run import train

    cfg = compose_config("train", [*TINY, "seed=7"])
    payload = train(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["seed"] == 7 and saved["overrides"] == []  # composed outside a Hydra job
    for column in ("test", "test_shuffled"):
        rows = read_rows(out / f"samples_{column}.csv")
        assert tuple(rows[0]) == SAMPLE_COLUMNS
        ids = [r["sample_id"] for r in rows]
        assert ids == sorted(set(ids)) and len(ids) == 12
        metrics = payload["metrics"][column]
        ious = [float(r["iou"]) for r in rows]
        assert 100 * sum(ious) / len(ious) == pytest.approx(metrics["gIoU"], abs=1e-3)
        inter, union = sum(int(r["intersection"]) for r in rows), sum(int(r["union"]) for r in rows)
        assert 100 * inter / union == pytest.approx(metrics["cIoU"], abs=1e-4)  # logged as float32
        for group in {r["group"] for r in rows}:
            mine = [float(r["iou"]) for r in rows if r["group"] == group]
            assert 100 * sum(mine) / len(mine) == pytest.approx(metrics[f"gIoU/{group}"], abs=1e-3)
    # the shuffled pass scores the same samples with other sentences
    assert [r["sample_id"] for r in read_rows(out / "samples_test.csv")] == ids


def test_sample_files_quote_ids_and_leave_no_temporary_file(tmp_path):
    rows = [{"sample_id": "a,1", "group": "", "iou": 1 / 3, "intersection": 1, "union": 3}]
    (path,) = save_sample_scores(tmp_path, {"val": rows})
    assert path.name == "samples_val.csv"
    (row,) = read_rows(path)
    # a comma in an id is quoted, not split
    assert row == {"sample_id": "a,1", "group": "", "iou": "0.333333", "intersection": "1", "union": "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["samples_val.csv"]
