"""Run what the command asks: the composition itself, or each entry of a named suite.

A suite entry is composed anew (``conf/bench.yaml`` with the entry's overrides, as the command line
would compose it), its ``bench`` settings merged over the composed ``bench`` node; each entry's
tables go to ``<out_dir>/<entry>.json`` / ``.txt``, and ``<out_dir>/suite.txt`` holds them all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rsrefseg.bench.composition import compose_config
from rsrefseg.bench.report import check_free, render, write_report
from rsrefseg.bench.run import run_benchmark
from rsrefseg.errors import ConfigError
from rsrefseg.io import atomic_write_text

log = logging.getLogger(__name__)


def composition_name(choices: Mapping[str, Any]) -> str:
    """``model/clip=…, model/sam=…, model/prompter=…`` from Hydra's choices."""
    picked = [f"{k}={v}" for k, v in choices.items() if k.startswith("model/") and k != "model/clip/scale"]
    return ", ".join(picked) or "model"


def suite_entries(cfg: DictConfig, name: str) -> list[dict[str, Any]]:
    """The entries of ``suites.<name>``, checked.

    Raises:
        ConfigError: an unknown suite, or an entry without a name / with unknown keys.
    """
    suites = cfg.get("suites") or {}
    if name not in suites:
        raise ConfigError(f"suite={name!r} is not a suite of conf/bench.yaml; suites: {sorted(suites)}")
    entries = OmegaConf.to_container(suites[name], resolve=False)
    for i, entry in enumerate(entries):
        unknown = set(entry) - {"name", "overrides", "bench"}
        if "name" not in entry or unknown:
            raise ConfigError(
                f"suites.{name}[{i}]: expected keys name, overrides, bench; got {sorted(entry)}"
            )
    return entries


def compose_entry(entry: Mapping[str, Any], extra: Sequence[str] = ()) -> DictConfig:
    """The ``bench`` composition of one suite entry (its overrides, then ``extra``), settings merged."""
    cfg = compose_config("bench", [*entry.get("overrides", []), *extra])
    if entry.get("bench"):
        with open_dict(cfg):
            cfg.bench = OmegaConf.merge(cfg.bench, entry["bench"])
    return cfg


def run_configured(
    cfg: DictConfig, *, choices: Mapping[str, Any], overrides: Sequence[str] = ()
) -> list[Path]:
    """Run ``cfg`` (``suite=null``) or its suite; returns the files written.

    Args:
        cfg: the composed ``bench`` config.
        choices: Hydra's config-group choices (names the composition in the report).
        overrides: the command line's overrides; a suite applies them to every entry after the
            entry's own (``suite`` and ``out_dir`` aside), and an entry's ``bench`` settings win.
    """
    out_dir = Path(str(cfg.out_dir)).expanduser()
    force = bool(cfg.force)
    if cfg.suite is None:
        check_free([out_dir / "bench.json", out_dir / "bench.txt"], force=force)
        report = run_benchmark(cfg, name="bench", composition=composition_name(choices))
        text = render(report)
        return [write_report(report, out_dir, "bench", text, force=force)]
    entries = suite_entries(cfg, str(cfg.suite))
    targets = [out_dir / f"{e['name']}.{ext}" for e in entries for ext in ("json", "txt")]
    check_free([*targets, out_dir / "suite.txt"], force=force)
    passed = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("suite", "out_dir", "force")]
    extra = [*passed, f"paths.output_dir={out_dir}"]
    written, texts = [], []
    for entry in entries:
        entry_cfg = compose_entry(entry, extra)
        composition = ", ".join(entry.get("overrides", [])) or "as composed"
        report = run_benchmark(entry_cfg, name=entry["name"], composition=composition)
        text = render(report)
        texts.append(text)
        written.append(write_report(report, out_dir, entry["name"], text, force=force))
        log.info("suite %s: %s in %.0f s", cfg.suite, entry["name"], report["wall_s"])
    written.append(atomic_write_text(out_dir / "suite.txt", "\n".join(texts)))
    return written
