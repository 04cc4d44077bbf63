"""A job's W&B identity from Hydra: run name and tags from its overrides, group from its sweep.

A sweep's jobs share a ``group`` (the sweep folder, relative to ``paths.log_dir``), and each is
named by the overrides that vary across the sweep (``model/prompter=first_order,seed=2``); every
override of the job except ``paths.*``, ``logger`` and ``hydra.*`` is also a tag, so the dashboard
can filter and group by any of them. A single run is named by all its overrides, or by its run
folder when it has none.

    identity = run_identity(HydraConfig.get(), fallback_name="2026-12-03_12-00-00", log_dir="logs")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

#: W&B refuses longer tags, and truncates longer groups in the UI
MAX_TAG_LENGTH = 64
MAX_GROUP_LENGTH = 128
#: overrides that say where things are or how the job logs, not what it trains: neither in names nor tags
UNNAMED_KEYS = ("logger", "hydra", "paths")


@dataclass(frozen=True)
class RunIdentity:
    """What a W&B run is called and where the dashboard files it."""

    name: str
    group: str | None = None
    tags: list[str] = field(default_factory=list)


def run_identity(
    hydra_cfg: DictConfig | None, *, fallback_name: str, log_dir: str | None = None
) -> RunIdentity:
    """The W&B name, group and tags of the Hydra job ``hydra_cfg`` (the ``hydra`` node).

    Args:
        hydra_cfg: the job's Hydra config (``HydraConfig.get()``), or None outside a Hydra job.
        fallback_name: the name of a run without overrides (e.g. its run folder's name).
        log_dir: ``paths.log_dir``; a sweep folder inside it is named relative to it.

    Returns:
        The identity; outside Hydra, ``fallback_name`` without group or tags.
    """
    if hydra_cfg is None:
        return RunIdentity(name=fallback_name)
    overrides = _named_overrides([str(o) for o in hydra_cfg.overrides.task])
    texts = [_text(o) for o in overrides]
    tags = [_tag(text) for text in texts]
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return RunIdentity(name=",".join(texts) or fallback_name, tags=tags)
    swept = swept_keys(hydra_cfg)
    varying = [text for o, text in zip(overrides, texts, strict=True) if o.key_or_group in swept]
    name = ",".join(varying or texts) or f"{hydra_cfg.job.name}-{hydra_cfg.job.num}"
    return RunIdentity(name=name, group=sweep_name(str(hydra_cfg.sweep.dir), log_dir), tags=tags)


def swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """Keys the sweep varies: sweep overrides of its command line and ``hydra.sweeper.params``.

    The command line's sweep overrides (``seed=1,2,3``) are in the sweep's ``multirun.yaml``, which
    Hydra's sweepers write into the sweep folder before the jobs start; a job only sees its own value.
    """
    keys = set((OmegaConf.select(hydra_cfg, "sweeper.params") or {}).keys())
    saved = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    if saved.is_file():
        sweep_overrides = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task") or []
        parsed = OverridesParser.create().parse_overrides([str(o) for o in sweep_overrides])
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return {str(k) for k in keys}


def sweep_name(sweep_dir: str, log_dir: str | None) -> str:
    """The sweep folder relative to ``log_dir`` (``train/multiruns/2026-12-03_12-00-00``), else its name."""
    folder = Path(sweep_dir).resolve()
    name = folder.name
    if log_dir is not None:
        # a sweep outside the log folder is named by its own folder
        with contextlib.suppress(ValueError):
            name = folder.relative_to(Path(log_dir).resolve()).as_posix()
    return name[-MAX_GROUP_LENGTH:]


def earlier_run_id(save_dir: str | Path) -> str | None:
    """The id of the latest W&B run in ``save_dir/wandb`` (an earlier attempt of this job), or None.

    A run folder is only written into again when the job resumes its own run (preemption, requeue,
    ``ckpt_path=last``); its W&B run then continues under the same id instead of starting a second
    one. Run folders are named ``[offline-]run-<YYYYMMDD_HHMMSS>-<id>``.
    """
    runs = [p for p in (Path(save_dir) / "wandb").glob("*run-*-*") if p.is_dir()]
    if not runs:
        return None
    latest = max(runs, key=lambda p: p.name.rsplit("-", 2)[-2])
    return latest.name.rsplit("-", 1)[-1]


def _named_overrides(overrides: list[str]) -> list[Override]:
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o for o in parsed if o.key_or_group.split(".")[0].split("/")[0] not in UNNAMED_KEYS]


def _text(override: Override) -> str:
    # the override as typed (``+trainer.foo=1``, ``model/prompter=first_order``)
    return override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}"


def _tag(text: str) -> str:
    return text if len(text) <= MAX_TAG_LENGTH else text[: MAX_TAG_LENGTH - 1] + "…"
