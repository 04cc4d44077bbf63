"""What a metrics file scored: the data config ``rsrefseg-eval`` uses, and the record of it in every file.

``rsrefseg-eval`` scores the data the checkpoint was trained on unless the command line composes
another data config (``data=<name>``): the eval config's default, ``data=checkpoint``
(conf/data/checkpoint.yaml), is a marker that carries only a new ``root`` and loader settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rsrefseg.errors import ConfigError

#: the marker key of conf/data/checkpoint.yaml
FROM_CHECKPOINT = "from_checkpoint"
#: keys the marker may set on the stored data config: what the datamodule reads as it is, so a new
#: value takes effect exactly (the stored config is resolved, derived values would not follow others)
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers")
#: the marker key that moves the stored dataset folder (see :func:`relocated`)
ROOT = "root"

CHECKPOINT, COMMAND_LINE = "checkpoint", "command line"


def eval_data_config(
    composed: DictConfig | None, run_config: Mapping[str, Any], *, source: str
) -> tuple[DictConfig | dict[str, Any], str]:
    """The data config to score and where it came from (``checkpoint`` or ``command line``).

    Args:
        composed: the eval config's ``data`` node: the ``data=checkpoint`` marker (the stored
            config, with the loader settings and ``root`` it sets), or a composed data config
            (``data=<name>``), which is used as it is.
        run_config: the run config stored in the checkpoint (its ``data`` node is resolved).
        source: the checkpoint file, for messages.

    Raises:
        ConfigError: the marker sets another key, or ``root`` for data without one; the
            checkpoint stores no data config.
    """
    if composed is None or not composed.get(FROM_CHECKPOINT):
        return composed, COMMAND_LINE
    stored = run_config.get("data")
    if not isinstance(stored, Mapping) or "_target_" not in stored:
        raise ConfigError(f"{source} stores no data config: compose the data to score, e.g. data=rrsisd")
    given = OmegaConf.to_container(composed, resolve=True)
    others = sorted(set(given) - {FROM_CHECKPOINT, ROOT, *LOADER_KEYS})
    if others:
        names = ", ".join(f"data.{key}" for key in others)
        raise ConfigError(
            f"{names} cannot be applied to the data config stored in {source}: it is stored resolved, "
            "so the values derived from it would not follow. Compose the dataset instead, e.g. "
            f"data=<name> data.{others[0]}=… (the stored config is in the checkpoint's run folder, "
            f"config_resolved.yaml); on the stored config only {', '.join([ROOT, *LOADER_KEYS])} "
            "can change"
        )
    data = dict(stored)
    if given.get(ROOT) is not None:
        if not data.get(ROOT):
            raise ConfigError(
                f"data.root={given[ROOT]}: the data config stored in {source} "
                f"({dataset_name(data, 'test')}) reads no folder"
            )
        data = relocated(data, str(data[ROOT]), str(given[ROOT]))
    loader = {key: value for key, value in given.items() if key in LOADER_KEYS and value is not None}
    return {**data, **loader}, CHECKPOINT


def relocated(node: Any, old_root: str, new_root: str) -> Any:
    """``node`` with every path inside ``old_root`` (``root`` itself included) moved to ``new_root``.

    The stored config is resolved: ``reader.root: ${data.root}`` and ``${data.root}/…`` values
    are plain copies of the old root, so they move with it, as the interpolation would have.
    """
    if isinstance(node, Mapping):
        return {key: relocated(value, old_root, new_root) for key, value in node.items()}
    if isinstance(node, list):
        return [relocated(value, old_root, new_root) for value in node]
    if isinstance(node, str):
        old = old_root.rstrip("/")
        if node.rstrip("/") == old:
            return new_root
        if node.startswith(old + "/"):
            return new_root.rstrip("/") + node[len(old) :]
    return node


def dataset_name(data: Mapping[str, Any], split: str) -> str:
    """The data config's ``name``; for configs without one, the class that builds the split."""
    if data.get("name"):
        return str(data["name"])
    target = str((data.get("splits") or {}).get(split, {}).get("_target_", "unknown"))
    return target.rsplit(".", 1)[-1]


def scored_on(
    data: Mapping[str, Any], metrics: Mapping[str, Any], *, split: str, data_config: str
) -> dict[str, Any]:
    """The record every metrics file carries: what was scored, and at which resolution and Pr@X rule.

    Args:
        data: the data config that built the split (resolved, or a node of the run's config).
        metrics: the ``metrics`` config node (``resolution``, ``inclusive_pr``, ``threshold``).
        split: the split scored.
        data_config: where ``data`` came from: ``checkpoint`` or ``command line``.
    """
    root = data.get("root")
    return {
        "dataset": dataset_name(data, split),
        "root": str(root) if root is not None else None,
        "data_config": data_config,
        "split": split,
        "input_size": data.get("image_size"),
        "resolution": str(metrics.get("resolution", "original")),
        "pr_rule": "IoU >= X" if metrics.get("inclusive_pr", False) else "IoU > X",
        "threshold": float(metrics.get("threshold", 0.5)),
    }


def describe(record: Mapping[str, Any]) -> str:
    """One line for a table title, e.g. ``RRSIS-D test split, scored at the original size, Pr@X: IoU > X``."""
    return (
        f"{record['dataset']} {record['split']} split, scored at the {record['resolution']} size, "
        f"Pr@X: {record['pr_rule']}"
    )


def job_overrides() -> list[str]:
    """The Hydra job's command-line overrides (``key=value``); [] outside a Hydra job.

    Recorded in ``metrics.json`` so that ``rsrefseg-aggregate`` can group a sweep's jobs by setting.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]
