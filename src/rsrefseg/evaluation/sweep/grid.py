"""The jobs a sweep should have run, from its ``multirun.yaml``, so that a job that never started is listed.

- Hydra's basic sweeper (also behind the submitit launchers): the Cartesian product of
  ``hydra.sweeper.params`` and the sweep overrides of the command line (``hydra.overrides.task``),
  expanded with Hydra's own override parser exactly as :class:`BasicSweeper` does; job ``#i`` is
  the ``i``-th combination.
- hydra-optuna-sweeper: ``hydra.sweeper.n_trials`` jobs numbered ``0 … n_trials-1``; their
  parameters are drawn at run time, so a missing trial is known by its number only.
- Any other sweeper: unknown; the report says that missing jobs were not checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExpectedJob:
    """One job a sweep launches.

    Attributes:
        num: Hydra's job number (the job folder's name).
        overrides: The job's task overrides; None for an optuna trial (drawn at run time).
    """

    num: int
    overrides: tuple[str, ...] | None


class GridUnknown(Exception):
    """The sweep's jobs cannot be listed in advance; the message says why."""


def expected_jobs(multirun: Mapping[str, Any]) -> list[ExpectedJob]:
    """List the jobs a sweep launches.

    Args:
        multirun: The sweep's ``multirun.yaml`` as a plain container (interpolations unresolved).

    Raises:
        GridUnknown: For a sweeper whose jobs are not known in advance, or a sweep that does not parse.
    """
    hydra = multirun.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    target = str(sweeper.get("_target_", ""))
    task = list((hydra.get("overrides") or {}).get("task") or [])
    if target.endswith("BasicSweeper"):
        return _basic_grid(sweeper.get("params") or {}, task)
    if "optuna" in target:
        return _optuna_trials(sweeper)
    raise GridUnknown(f"sweeper {target or '(none)'}: its jobs are not known in advance")


def _basic_grid(params: Mapping[str, Any], task: Sequence[str]) -> list[ExpectedJob]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # the same order and string forms as BasicSweeper.sweep: config params first, then the command line
    arguments = [f"{key}={value}" for key, value in params.items()] + list(task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except Exception as error:
        raise GridUnknown(f"cannot parse the sweep overrides {arguments}: {error}") from error
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise GridUnknown(f"{key}: a {override.value_type} sweep has no fixed list of values")
            try:
                axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            except Exception as error:  # glob() over a config group needs the config tree
                raise GridUnknown(f"cannot expand {key}: {error}") from error
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [ExpectedJob(num, tuple(job)) for num, job in enumerate(itertools.product(*axes.values()))]


def _optuna_trials(sweeper: Mapping[str, Any]) -> list[ExpectedJob]:
    sampler = str((sweeper.get("sampler") or {}).get("_target_", ""))
    if sampler.endswith("GridSampler"):
        raise GridUnknown("optuna's GridSampler lowers n_trials to the grid size at run time")
    n_trials = sweeper.get("n_trials")
    if not isinstance(n_trials, int):
        raise GridUnknown(f"hydra.sweeper.n_trials={n_trials!r} is not a number")
    return [ExpectedJob(num, None) for num in range(n_trials)]
