"""Which overrides make a job's *setting*, and the grouping of jobs by setting.

A setting is a job's Hydra task overrides minus

- the seed (``seed=…``): jobs that differ only in their seed are replicates of one setting;
- logistic overrides, which change where or how a job runs but not what it computes:
  :data:`LOGISTIC_KEYS` (``hydra.*``, the ``logger`` group and its keys, ``paths.*``,
  ``task_name``, ``ckpt_path`` and the resume / progress options ``callbacks.last_checkpoint.*``,
  ``callbacks.progress_bar.*`` a job resumed by hand may add), plus what the user names with ``--ignore``.

Everything else counts, including ``trainer.devices`` / ``trainer.num_nodes`` / ``trainer=…``:
they change the global batch and the data sharding, so runs on one and on eight GPUs are not
replicates unless the user says so (``--ignore trainer.devices``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rsrefseg.errors import UserError

if TYPE_CHECKING:
    from rsrefseg.evaluation.sweep.jobs import Job

#: override keys (fnmatch patterns, matched without a leading ``+``/``++``/``~``) that are not
#: part of a setting: they choose where a job runs, where it writes or what it logs to
LOGISTIC_KEYS = (
    "hydra",
    "hydra.*",
    "hydra/*",
    "logger",
    "logger.*",
    "logger/*",
    "paths",
    "paths.*",
    "paths/*",
    "task_name",
    "ckpt_path",
    "callbacks.last_checkpoint.*",
    "callbacks.progress_bar.*",
)

SEED_KEY = "seed"

Setting = tuple[str, ...]


def override_key(override: str) -> str:
    """The key of a ``key=value`` override, without Hydra's ``+``, ``++`` and ``~`` prefixes."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str | None:
    """The value of a ``key=value`` override as typed; None for a deletion without value (``~key``)."""
    return override.split("=", 1)[1] if "=" in override else None


def is_seed(override: str, *, seed_key: str = SEED_KEY) -> bool:
    return override_key(override) == seed_key


def is_logistic(override: str, *, ignore: Iterable[str] = ()) -> bool:
    key = override_key(override)
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in (*LOGISTIC_KEYS, *ignore))


def setting_of(overrides: Sequence[str], *, ignore: Iterable[str] = (), seed_key: str = SEED_KEY) -> Setting:
    """The setting of a job with these overrides: sorted, without the seed and logistic overrides.

    Sorted so that the same overrides typed in another order are the same setting.
    """
    ignore = tuple(ignore)
    return tuple(
        sorted(
            o for o in overrides if not is_seed(o, seed_key=seed_key) and not is_logistic(o, ignore=ignore)
        )
    )


def seed_override(overrides: Sequence[str], *, seed_key: str = SEED_KEY) -> str | None:
    """The value of the ``seed=`` override, or None."""
    values = [override_value(o) for o in overrides if is_seed(o, seed_key=seed_key)]
    return values[-1] if values else None


def common_overrides(settings: Sequence[Setting]) -> tuple[str, ...]:
    """The overrides every setting shares (printed once above the table instead of in every row)."""
    if not settings:
        return ()
    shared = set(settings[0]).intersection(*settings[1:])
    return tuple(o for o in settings[0] if o in shared)


def setting_label(setting: Setting, common: Sequence[str]) -> str:
    """A row's name: the setting's overrides that not every setting shares; ``(base)`` when none."""
    own = [o for o in setting if o not in common]
    return " ".join(own) if own else "(base)"


def group_by_setting(
    jobs: Iterable[Job], *, ignore: Iterable[str] = (), seed_key: str = SEED_KEY
) -> dict[Setting, list[Job]]:
    """Group usable jobs by setting, in the order settings first appear; seeds in ascending order.

    Raises:
        UserError: When two jobs have the same setting and the same seed: both would count as
            replicates, so the user picks one (a sweep passed twice, or rerun into the same folder).
    """
    ignore = tuple(ignore)
    groups: dict[Setting, list[Job]] = {}
    for job in jobs:
        group = groups.setdefault(setting_of(job.overrides, ignore=ignore, seed_key=seed_key), [])
        twin = next((other for other in group if other.seed == job.seed), None)
        if twin is not None:
            raise UserError(
                f"{twin.path} and {job.path} are the same setting with the same seed "
                f"({seed_key}={job.seed}): aggregate only one of them (pass one of the two sweep folders, "
                "or move one job folder away)"
            )
        group.append(job)
    return {setting: sorted(group, key=_seed_order) for setting, group in groups.items()}


def _seed_order(job: Job) -> tuple[bool, int | str]:
    return (not isinstance(job.seed, int), job.seed if isinstance(job.seed, int) else str(job.seed))
