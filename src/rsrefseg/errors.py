"""User errors: one line on stderr that names the key, file or value and the fix; no traceback.

Every console script runs inside :func:`reports_errors`. An error the user can fix is printed as

    rsrefseg-train: error: optimizer.lr='abc': expected a number (lr of torch.optim.AdamW), got a string

and the process exits with

    2  a configuration error: a value of the wrong type, an unknown or misspelt key, a config
       group option that does not exist, a required value left ``???``, a bad override;
    1  any other error: a missing, empty or corrupt file, an output that needs ``--force``, a
       checkpoint of another network, and every unexpected error (which keeps its traceback).

``RSREFSEG_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1`` while ``RSREFSEG_DEBUG`` is unset) lets
every exception propagate with its full traceback.

What counts as a user error: :class:`UserError` (:class:`ConfigError` for configuration), Hydra's
composition errors, OmegaConf's errors (they name the key), Lightning's
``MisconfigurationException`` (a trainer setting), an ``OSError`` naming a file, and any other
exception that a ``raise`` statement of this package produced — those messages are written for the
user (``ValueError`` naming the field and the expected value, ``FileNotFoundError`` naming the
file, …). The same exception types raised inside torch or another library, and assertion
failures, are bugs: they keep the traceback.
"""

from __future__ import annotations

import difflib
import dis
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

#: exit status of a configuration error (argparse uses 2 for a bad command line, too)
EXIT_CONFIG = 2
#: exit status of any other error
EXIT_ERROR = 1

DEBUG_ENV = "RSREFSEG_DEBUG"
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """An error the user fixes (a file, a flag, a setting); its message names what and how.

    Attributes:
        exit_code: The process's exit status when this error ends a console script.
    """

    exit_code = EXIT_ERROR


class ConfigError(UserError, ValueError):
    """A composed configuration that cannot run: the message names the key, the value and the fix."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class Report:
    """How a console script reports an error: one line and an exit status."""

    message: str
    exit_code: int


def traceback_requested() -> bool:
    """Whether errors propagate with their traceback (``RSREFSEG_DEBUG=1``, else ``HYDRA_FULL_ERROR=1``)."""
    value = os.environ.get(DEBUG_ENV)
    if value is None:
        value = os.environ.get(HYDRA_FULL_ERROR, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def reports_errors(prog: str) -> Callable[[F], F]:
    """Decorate a console script's ``main``: user errors become one line on stderr and an exit status.

    Works for argparse scripts and for ``@hydra.main`` ones (apply it outside ``hydra.main``).
    Hydra is told to re-raise (``HYDRA_FULL_ERROR=1`` for the call) so that its composition
    errors reach this wrapper instead of Hydra's own report. Processes started meanwhile (DDP
    ranks) inherit an explicit ``RSREFSEG_DEBUG``, so they report errors the same way.
    """

    def decorate(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            debug = traceback_requested()
            with _environment({DEBUG_ENV: "1" if debug else "0", HYDRA_FULL_ERROR: "1"}):
                try:
                    return main(*args, **kwargs)
                except Exception as error:
                    exit_with_report(prog, error, debug=debug)
                    raise

        return run  # type: ignore[return-value]

    return decorate


def reports_job_errors(prog: str) -> Callable[[F], F]:
    """Decorate a Hydra task function: a user error of a single run is reported from inside the job.

    Hydra prints "Error executing job with overrides: …" before re-raising a failed job; a single
    run reports the error itself and exits (so Hydra's ``on_job_end`` callbacks do not run for it;
    the project registers none), so that the one line is all the user sees. In a
    multirun the error goes back to Hydra, which finishes the other jobs first and names the
    failed job's overrides; :func:`reports_errors` then prints the line.
    """

    def decorate(task: F) -> F:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return task(*args, **kwargs)
            except Exception as error:
                if _single_run():
                    exit_with_report(prog, error, debug=traceback_requested())
                raise

        return run  # type: ignore[return-value]

    return decorate


def exit_with_report(prog: str, error: BaseException, *, debug: bool) -> None:
    """Print ``error`` as one line and exit when it is a user error; return (to re-raise) otherwise."""
    if debug:
        return
    report = describe(error)
    if report is None:
        return
    print(f"{prog}: error: {report.message}", file=sys.stderr, flush=True)
    raise SystemExit(report.exit_code) from None


def describe(error: BaseException) -> Report | None:
    """The one-line report of a user error; None for an unexpected error (a bug: keep the traceback)."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return Report(_one_line(str(error)), error.exit_code)
    if isinstance(error, MissingConfigException):
        return Report(_missing_option(error), EXIT_CONFIG)
    if isinstance(error, InstantiationException):
        return _instantiation(error)
    if isinstance(error, ConfigCompositionException) and isinstance(error.__cause__, OmegaConfBaseException):
        return Report(_unknown_override(error, error.__cause__), EXIT_CONFIG)
    if isinstance(error, OverrideParseException):
        return Report(
            f"cannot parse the override {error.override!r}: {_one_line(error.message)}", EXIT_CONFIG
        )
    if isinstance(error, HydraException):
        return Report(_one_line(str(error)), EXIT_CONFIG)
    if isinstance(error, OmegaConfBaseException):
        return Report(_omegaconf(error), EXIT_CONFIG)
    if _is_lightning_misconfiguration(error):
        return Report(f"trainer: {_one_line(str(error))}", EXIT_CONFIG)
    if isinstance(error, OSError) and error.filename is not None:
        return Report(_one_line(str(error)), EXIT_ERROR)
    if _raised_by_this_package(error) and not isinstance(error, AssertionError | NotImplementedError):
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return Report(_one_line(str(message)), EXIT_ERROR)
    return None


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip()) or "(no message)"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def _missing_option(error: Any) -> str:
    """``model/clip=tinyy`` → the group, the nearest option and every option."""
    missing = error.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = list(error.options or [])
    if not group or not options:
        return _one_line(str(error))
    message = f"{group}={option}: no such option in config group {group}"
    near = nearest_key(option, options)
    if near:
        message += f"; did you mean {group}={near}?"
    return f"{message} (options: {', '.join(options)})"


def _unknown_override(error: Exception, cause: Any) -> str:
    """``optimzer.lr=1`` → the key that is not in the config, the nearest one, and how to add a key."""
    override = re.search(r"Could not override '([^']+)'", str(error))
    key = override.group(1) if override else str(getattr(cause, "full_key", "") or "")
    if not key:
        return _one_line(f"{error}: {_first_line(str(cause))}")
    message = f"{key}: no such key in the config"
    near = nearest_key(key, _config_keys(getattr(cause, "parent_node", None), grouped="/" in key))
    if near:
        message += f"; did you mean {near}?"
    append = re.search(r"use (\+\S+)", str(error))
    if append:
        message += f" (to add a new key: {append.group(1)})"
    return message


def nearest_key(key: str, keys: list[str]) -> str | None:
    """The existing key closest to a misspelt one (difflib), or None."""
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return near[0] if near else None


def _config_keys(node: Any, *, grouped: bool) -> list[str]:
    """Every key of the config ``node`` belongs to, dotted (``a.b``) or as group paths (``a/b``)."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return []
    root = node._get_root()
    keys: list[str] = []

    def walk(config: DictConfig, prefix: str) -> None:
        for name in config:
            path = f"{prefix}{name}"
            keys.append(path)
            child = config._get_node(name)
            if isinstance(child, DictConfig) and not child._is_interpolation() and not child._is_missing():
                walk(child, f"{path}.")

    walk(root, "")
    return [k.replace(".", "/") for k in keys] if grouped else keys


def _omegaconf(error: Any) -> str:
    from omegaconf.errors import MissingMandatoryValue

    key = getattr(error, "full_key", None) or getattr(error, "key", None)
    if isinstance(error, MissingMandatoryValue) and key:
        return missing_value_message([str(key)])
    detail = _first_line(str(error))
    return f"{key}: {detail}" if key else _one_line(str(error))


def missing_value_message(keys: list[str]) -> str:
    """The report of required values left ``???``."""
    settings = " ".join(f"{key}=…" for key in keys)
    noun = "a value" if len(keys) == 1 else "values"
    return f"{', '.join(keys)} needs {noun} (??? in the config): add {settings} to the command line"


def _instantiation(error: Exception) -> Report | None:
    """Hydra wraps what a ``_target_`` raised; report the cause, naming the target it was building."""
    cause = error.__cause__
    if cause is None:
        return Report(_one_line(str(error)), EXIT_CONFIG)
    report = describe(cause)
    if report is None:
        return None
    target = re.search(r"target '([^']+)'", str(error))
    where = f" (building {target.group(1)})" if target and target.group(1) not in report.message else ""
    return Report(report.message + where, report.exit_code)


def _is_lightning_misconfiguration(error: BaseException) -> bool:
    return any(cls.__name__ == "MisconfigurationException" for cls in type(error).__mro__)


def _raised_by_this_package(error: BaseException) -> bool:
    """Whether a ``raise`` statement in ``rsrefseg`` created the exception (not a call that failed)."""
    tb: TracebackType | None = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    if not str(frame.f_globals.get("__name__", "")).startswith("rsrefseg."):
        return False
    # a failing call (int('x'), torch.cat of mismatched shapes) also ends in this package's frame;
    # only the RAISE instruction marks a message written for the user
    return any(
        instruction.offset == tb.tb_lasti and instruction.opname == "RAISE_VARARGS"
        for instruction in dis.get_instructions(frame.f_code)
    )


def _single_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
