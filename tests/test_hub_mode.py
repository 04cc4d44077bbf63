"""The Hugging Face hub mode is decided where it takes effect: before huggingface_hub reads its settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_mode(script: str, **env: str) -> str:
    """Run ``script`` in a fresh interpreter whose environment sets only ``env`` of the hub variables."""
    clean = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


REPORT = "import huggingface_hub.constants as c, os; print(c.is_offline_mode(), os.getenv('HF_HUB_OFFLINE'))"


def test_an_entry_point_is_offline_when_nothing_is_set():
    """What `rsrefseg-train` does: import the package (open_clip pulls huggingface_hub in), then prepare."""
    script = f"from rsrefseg.process import prepare_process; prepare_process(); {REPORT}"
    assert hub_mode(script) == "True 1"


@pytest.mark.parametrize(("value", "expected"), [("0", "False 0"), ("1", "True 1")])
def test_an_explicit_choice_is_kept(value, expected):
    assert hub_mode(f"import rsrefseg; {REPORT}", HF_HUB_OFFLINE=value) == expected


def test_the_default_applies_when_huggingface_hub_was_imported_first():
    script = f"import huggingface_hub.constants; import rsrefseg; {REPORT}"
    assert hub_mode(script) == "True 1"
