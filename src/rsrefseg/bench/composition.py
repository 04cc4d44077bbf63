"""Compose configs from inside a running Hydra job (suite entries, the loader's on-disk dataset).

Hydra's compose API needs its global state for itself; a job already holds it, so the state is
set aside for the composition and put back after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig

from rsrefseg.config.build import CONFIG_DIR


@contextlib.contextmanager
def _own_global_hydra() -> Iterator[None]:
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    """The primary config ``name`` of ``conf/`` with ``overrides``, as the command line would compose it."""
    with _own_global_hydra(), initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
