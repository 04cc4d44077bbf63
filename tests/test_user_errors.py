"""User errors end a console script with one line naming the key, file or value and the fix.

Configuration errors exit with 2, other user errors with 1; ``RSREFSEG_DEBUG=1`` (or
``HYDRA_FULL_ERROR=1``) keeps the traceback. The console scripts' ``main`` runs in this process
(one torch import for all cases); one test runs a real console script in a subprocess.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONFIG_GROUPS, compose_config, group_options
from rsrefseg.cli import eval as eval_cli
from rsrefseg.cli import export as export_cli
from rsrefseg.cli import prepare as prepare_cli
from rsrefseg.cli import train as train_cli
from rsrefseg.config.schema import check_config, missing_values
from rsrefseg.errors import EXIT_CONFIG, EXIT_ERROR, ConfigError, describe

BIN = Path(sys.executable).parent


@pytest.fixture
def console(monkeypatch, capsys, tmp_path):
    """``run(main, *argv)``: a console script's main in this process → (exit status, stderr lines)."""
    monkeypatch.setenv("RSREFSEG_LOG_DIR", str(tmp_path / "logs"))
    for name in ("RSREFSEG_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(main, *argv: str) -> tuple[int, list[str]]:
        monkeypatch.setattr(sys, "argv", ["prog", *argv])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err.strip().splitlines()

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def error_line(lines: list[str], prog: str) -> str:
    """The report: stderr's last line (Lightning may log above it), and no traceback."""
    assert lines, "nothing on stderr"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert lines[-1].startswith(f"{prog}: error: "), lines
    return lines[-1]


# --------------------------------------------------------------------------------------------------
# Values of the wrong type: named before anything is built
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=abc", ["optimizer.lr='abc'", "expected a number", "torch.optim.AdamW", "a string"]),
        (
            "model.prompter.depths=abc",
            ["model.prompter.depths='abc'", "a list of 3 ints", "CascadedPrompter"],
        ),
        ("model.prompter.depths=[1,2]", ["model.prompter.depths=[1, 2]", "a list of 3 ints"]),
        ("data.image_size=abc", ["data.image_size='abc' (used as data.", "expected an int"]),
        ("model.finetune=lroa", ["model.finetune='lroa'", "one of 'full', 'lora', 'frozen'", "mean 'lora'"]),
        ("trainer.max_steps=1.5", ["trainer.max_steps=1.5", "expected an int", "got a float"]),
        ("select_on=best", ["select_on='best'", "one of 'val', 'test'"]),
        ("task_name=2024", ["task_name=2024: expected a string", "quote a string: 'task_name=\"2024\"'"]),
        (
            "+model.prompter.dpths=1",
            ["model.prompter.dpths", "no parameter 'dpths'", "model.prompter.depths?"],
        ),
    ],
)
def test_a_bad_value_is_named_with_its_key_and_the_expected_type(override, expected):
    cfg = compose_config("train", [override])
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    for part in expected:
        assert part in str(error.value)
    assert "\n" not in str(error.value)


def test_a_required_value_left_unset_is_named():
    cfg = compose_config("eval")
    assert missing_values(cfg) == ["ckpt_path"]
    with pytest.raises(ConfigError, match=r"ckpt_path needs a value .*ckpt_path=…"):
        check_config(cfg)


@pytest.mark.parametrize("group", CONFIG_GROUPS)
def test_every_config_group_option_composes_and_passes_the_checks(group):
    for option in group_options(group):
        cfg = compose_config("train", [f"{group}={option}"])
        for key in missing_values(cfg):  # e.g. a recipe's pretrained file: any path passes the check
            OmegaConf.update(cfg, key, "/path/to/file")
        check_config(cfg)


def test_the_eval_and_report_configs_pass_the_checks():
    check_config(compose_config("eval", ["ckpt_path=/path/best.ckpt"]))
    check_config(compose_config("report"))


# --------------------------------------------------------------------------------------------------
# The console scripts
# --------------------------------------------------------------------------------------------------


def test_the_train_script_reports_a_misspelt_key_in_one_line(tmp_path):
    """Through the installed console script: exit status 2, one line on stderr, the nearest key."""
    env = {**os.environ, "RSREFSEG_LOG_DIR": str(tmp_path / "logs"), "HF_HUB_OFFLINE": "1"}
    for name in ("RSREFSEG_DEBUG", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    result = subprocess.run(
        [str(BIN / "rsrefseg-train"), "optimzer.lr=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.strip().splitlines() == [
        "rsrefseg-train: error: optimzer.lr: no such key in the config; did you mean optimizer.lr? "
        "(to add a new key: +optimzer.lr=1)"
    ]


def test_a_wrong_type_stops_training_before_anything_is_built(console, tmp_path):
    code, lines = console(train_cli.main, "model.prompter.depths=abc")
    assert code == EXIT_CONFIG
    assert "model.prompter.depths='abc': expected a list of 3 ints" in error_line(lines, "rsrefseg-train")
    assert not list(tmp_path.glob("logs/train/runs/*/config_resolved.yaml"))


def test_an_unknown_option_lists_the_options(console):
    code, lines = console(train_cli.main, "model/clip=tinyy")
    assert code == EXIT_CONFIG
    line = error_line(lines, "rsrefseg-train")
    assert "did you mean model/clip=tiny?" in line and "vit_b16" in line


def test_eval_names_a_missing_ckpt_path_and_an_empty_checkpoint(console, tmp_path):
    code, lines = console(eval_cli.main)
    assert code == EXIT_CONFIG
    assert "ckpt_path needs a value" in error_line(lines, "rsrefseg-eval")

    empty = tmp_path / "empty.ckpt"
    empty.touch()
    code, lines = console(eval_cli.main, f"ckpt_path={empty}")
    assert code == EXIT_ERROR
    assert str(empty) in error_line(lines, "rsrefseg-eval")


def test_export_asks_for_force_in_one_line(console, tmp_path):
    existing = tmp_path / "merged.ckpt"
    existing.write_bytes(b"keep")
    code, lines = console(export_cli.main, str(tmp_path / "best.ckpt"), str(existing))
    assert code == EXIT_ERROR
    line = error_line(lines, "rsrefseg-export")
    assert str(existing) in line and "--force" in line
    assert existing.read_bytes() == b"keep"


def test_prepare_reports_a_misspelt_override_in_one_line(capsys, tmp_path):
    argv = ["--layout", "refsegrs", "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        prepare_cli.main([*argv, "data.reader.imge_dir=images"])
    assert exit_info.value.code == EXIT_CONFIG
    line = error_line(capsys.readouterr().err.strip().splitlines(), "rsrefseg-prepare")
    assert "data.reader.imge_dir: no such key in the config; did you mean data.reader.image_dir?" in line


@pytest.mark.parametrize(
    ("env", "traceback"),
    [
        ({"RSREFSEG_DEBUG": "1"}, True),
        ({"HYDRA_FULL_ERROR": "1"}, True),
        ({"RSREFSEG_DEBUG": "0", "HYDRA_FULL_ERROR": "1"}, False),
    ],
)
def test_the_traceback_is_kept_on_request(console, monkeypatch, env, traceback):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if traceback:
        monkeypatch.setattr(sys, "argv", ["prog", "optimzer.lr=1"])
        with pytest.raises(ConfigCompositionException):
            train_cli.main()
    else:
        code, _ = console(train_cli.main, "optimzer.lr=1")
        assert code == EXIT_CONFIG
    # the wrapper hands Hydra HYDRA_FULL_ERROR=1 for the call only
    assert {name: os.environ.get(name) for name in env} == env


# --------------------------------------------------------------------------------------------------
# Which errors are user errors
# --------------------------------------------------------------------------------------------------


def _in_package(source: str):
    """A function defined as if in a module of this package."""
    namespace: dict = {"__name__": "rsrefseg.example"}
    exec(source, namespace)
    return namespace["f"]


@pytest.mark.parametrize(
    ("source", "reported"),
    [
        ("def f():\n    raise ValueError('data.root=/x: no such folder; set data.root')", True),
        ("def f():\n    raise KeyError('42 is not listed in instances.json')", True),
        ("def f():\n    return int('abc')", False),  # a failing call in our code: a bug
        ("def f():\n    assert 1 == 2, 'shapes'", False),
    ],
)
def test_only_messages_this_package_raises_are_user_errors(source, reported):
    with pytest.raises(Exception) as error:
        _in_package(source)()
    report = describe(error.value)
    assert (report is not None) == reported
    if reported:
        assert report.exit_code == EXIT_ERROR and "'" not in report.message[:1]


def test_a_target_s_own_message_is_reported_with_the_target():
    with pytest.raises(Exception) as error:
        instantiate({"_target_": "rsrefseg.data.transforms.HorizontalFlip", "p": 2.0})
    report = describe(error.value)
    assert report is not None and report.exit_code == EXIT_ERROR
    assert report.message.startswith("p=2.0; expected a probability")
    assert "(building rsrefseg.data.transforms.HorizontalFlip)" in report.message

    with pytest.raises(Exception) as error:
        instantiate({"_target_": "builtins.int", "_args_": ["abc"]})
    assert describe(error.value) is None  # a library's error keeps its traceback


def test_a_file_error_names_the_file(tmp_path):
    with pytest.raises(OSError) as error:
        (tmp_path / "missing.jsonl").read_text()
    report = describe(error.value)
    assert report is not None and str(tmp_path / "missing.jsonl") in report.message


def test_a_trainer_setting_lightning_rejects_is_a_configuration_error():
    import pytorch_lightning as pl

    with pytest.raises(Exception) as error:
        pl.Trainer(accelerator="cpu", devices=0, logger=False)
    report = describe(error.value)
    assert report is not None and report.exit_code == EXIT_CONFIG
    assert report.message.startswith("trainer: ")
