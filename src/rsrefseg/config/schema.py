"""Check a composed config before anything is built: value types, unknown parameters, ``???`` values.

The schema is the code. Every node with a ``_target_`` is checked against the signature of the
class or function it names: each key must be one of its parameters (nearest name suggested) and
each value must match the parameter's type annotation. A new backbone, prompter or reader config
therefore needs no schema edit; its class's annotations are the schema. The primary configs' own
settings, which no ``_target_`` receives, are typed in :data:`SETTINGS`.

A value that comes from an interpolation is reported under the key it was set at
(``data.image_size='abc' (used as data.transforms.eval.size): …``).

    check_config(cfg)   # raises ConfigError: one line naming the key, the value and the expected type
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import inspect
import re
import types
import typing
from pathlib import PurePath
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rsrefseg.data.records import SPLITS
from rsrefseg.errors import ConfigError, missing_value_message, nearest_key
from rsrefseg.evaluation.scoring import Resolution
from rsrefseg.training.checkpointing import FULL, TRAINABLE

#: Settings of the primary configs (train / eval / report) that no ``_target_`` receives; each is
#: checked where the composed config has it.
SETTINGS: dict[str, Any] = {
    "task_name": str,
    "seed": int,
    "ckpt_path": str | None,
    "select_on": Literal["val", "test"],
    "checkpoint_weights": Literal[TRAINABLE, FULL],  # type: ignore[valid-type]
    "test_after_fit": bool,
    "shuffled_sentence_test": bool,
    "trivial_baselines": bool,
    "split": Literal[SPLITS],  # type: ignore[valid-type]
    "metrics.inclusive_pr": bool,
    "metrics.threshold": float,
    "metrics.resolution": Resolution,
    "recipe.epochs": int,
    # rsrefseg-report
    "batch_size": int,
    "device": str,
    "precision": Literal["fp32", "bf16"],
    "flops": bool,
    "memory": bool,
}

#: Nodes whose builder passes only the keys the target accepts: the rest are values the node's
#: parts interpolate (``build_datamodule``: ``data.image_size``, ``data.root``, ``data.sizes``, …).
FILTERED_NODES = frozenset({"data"})

_SPECIAL_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
_INTERPOLATION = re.compile(r"\$\{(?:oc\.select:)?([\w.]+)(?:,[^}]*)?\}")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every problem of ``cfg`` that would stop or corrupt a run.

    Raises:
        ConfigError: A required value is ``???``; a setting or a ``_target_`` parameter has a value
            of the wrong type; a ``_target_`` node has a key its target does not take; a
            ``_target_`` cannot be imported.
    """
    problems: list[str] = []
    missing = missing_values(cfg)
    if missing:
        problems.append(missing_value_message(missing))
    for key, hint in SETTINGS.items():
        parent_path, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        if isinstance(parent, DictConfig) and name in parent and not OmegaConf.is_missing(parent, name):
            _check_value(cfg, parent, name, key, hint, f"{key} setting", problems)
    for path, node in _target_nodes(cfg, ""):
        _check_target(cfg, path, node, problems)
    if problems:
        raise ConfigError("; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Walking the config
# --------------------------------------------------------------------------------------------------


def _children(node: DictConfig | ListConfig, path: str) -> abc.Iterator[tuple[str, Any, Any]]:
    """(path, key, child node) of each direct child that is written here (not an interpolation)."""
    keys: abc.Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if path == "" and key == "hydra":
            continue
        child = node._get_node(key)
        if child is None or child._is_interpolation():
            continue
        if isinstance(node, ListConfig):
            yield f"{path}[{key}]", key, child
        else:
            yield (f"{path}.{key}" if path else str(key)), key, child


def missing_values(cfg: DictConfig) -> list[str]:
    """The keys of ``cfg`` whose value is ``???`` (required, not set), outside the ``hydra`` node."""
    return list(_missing_keys(cfg, ""))


def _missing_keys(node: DictConfig | ListConfig, path: str) -> abc.Iterator[str]:
    for child_path, _, child in _children(node, path):
        if child._is_missing():
            yield child_path
        elif isinstance(child, DictConfig | ListConfig):
            yield from _missing_keys(child, child_path)


def _target_nodes(node: DictConfig | ListConfig, path: str) -> abc.Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig) and "_target_" in node:
        yield path, node
    for child_path, _, child in _children(node, path):
        if isinstance(child, DictConfig | ListConfig) and not child._is_missing() and not child._is_none():
            yield from _target_nodes(child, child_path)


def _origin(cfg: DictConfig, node: DictConfig, key: Any) -> str | None:
    """The key an interpolated value was set at (``${data.image_size}`` → ``data.image_size``)."""
    origin = None
    child = node._get_node(key)
    for _ in range(16):  # interpolation chains are short; a cycle is OmegaConf's error to report
        if child is None or not child._is_interpolation():
            break
        match = _INTERPOLATION.fullmatch(str(child._value()))
        if match is None:
            break
        parent_path, _, name = match.group(1).rpartition(".")
        parent = OmegaConf.select(cfg, parent_path, default=None) if parent_path else cfg
        if not isinstance(parent, DictConfig) or name not in parent:
            break
        origin, child = match.group(1), parent._get_node(name)
    return origin


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _check_target(cfg: DictConfig, path: str, node: DictConfig, problems: list[str]) -> None:
    target_name = node.get("_target_")
    try:
        # what instantiate itself imports with (hydra.utils.get_object would also log the failure)
        from hydra._internal.utils import _locate

        target = _locate(str(target_name))
    except Exception as error:
        detail = " ".join(str(error).split())
        problems.append(f"{path}._target_={target_name!r} cannot be imported: {detail}")
        return
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    takes_any_key = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    hints = _type_hints(target)
    for key in node:
        if key in _SPECIAL_KEYS:
            continue
        key_path = f"{path}.{key}" if path else str(key)
        if key not in parameters:
            if not takes_any_key and path not in FILTERED_NODES:
                problem = f"{key_path}: {target_name} takes no parameter {key!r}"
                near = nearest_key(str(key), [p for p in parameters if p not in ("self", "args", "kwargs")])
                problems.append(f"{problem}; did you mean {path}.{near}?" if near else problem)
            continue
        if key in hints and not OmegaConf.is_missing(node, key):
            _check_value(cfg, node, key, key_path, hints[key], f"{key} of {target_name}", problems)


def _check_value(
    cfg: DictConfig, node: DictConfig, key: Any, key_path: str, hint: Any, what: str, problems: list[str]
) -> None:
    try:
        value = node[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as error:
        problems.append(f"{key_path}: {str(error).strip().splitlines()[0]}")
        return
    if matches(value, hint):
        return
    origin = _origin(cfg, node, key)
    where = f"{origin}={value!r} (used as {key_path})" if origin else f"{key_path}={value!r}"
    problem = f"{where}: expected {describe_type(hint)} ({what})"
    if _literal_choices(hint) and isinstance(value, str):
        near = nearest_key(value, [c for c in _literal_choices(hint) if isinstance(c, str)])
        problem += f"; did you mean {near!r}?" if near else ""
    elif not isinstance(value, list | dict):
        problem += f", got {_kind(value)}"
        if matches(str(value), hint):  # the command line reads 2024 as an int: quote a string
            problem += f" (quote a string: '{(origin or key_path)}=\"{value}\"')"
    problems.append(problem)


def _type_hints(target: Any) -> dict[str, Any]:
    """The parameter annotations of a class's ``__init__`` or of a function, evaluated.

    An annotation that cannot be evaluated (a name imported only for type checkers) is skipped.
    """
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:
        parameters = inspect.signature(target).parameters
        return {
            name: p.annotation
            for name, p in parameters.items()
            if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str)
        }


# --------------------------------------------------------------------------------------------------
# Values against type annotations
# --------------------------------------------------------------------------------------------------

_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection, set, frozenset)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain Python, interpolations resolved) fits a type annotation.

    A nested ``_target_`` node (instantiated before the call) fits any annotation; annotations
    this check does not understand accept every value, so a correct config never fails.
    """
    if isinstance(value, dict) and "_target_" in value:
        return True
    if hint is Any or isinstance(hint, typing.TypeVar | typing.ForwardRef | str):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if hint is None or hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return isinstance(value, str)
    container = origin or hint
    if container in _SEQUENCES:
        return isinstance(value, list) and _items_match(value, hint, args)
    if container in _MAPPINGS:
        return isinstance(value, dict) and (
            len(args) != 2 or all(matches(v, args[1]) for v in value.values())
        )
    if container is abc.Callable:
        return False  # a callable comes from a _target_ node (accepted above), never from a plain value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        fields = _type_hints(hint)
        return all(key in fields and matches(item, fields[key]) for key, item in value.items())
    if inspect.isclass(hint) and origin is None:
        return isinstance(value, hint)
    return True


def _items_match(value: list[Any], hint: Any, args: tuple[Any, ...]) -> bool:
    if not args:
        return True
    if (typing.get_origin(hint) or hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
    return all(matches(v, args[0]) for v in value)


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(hint) for c in _literal_choices(arg))
    return ()


_NAMES = {bool: ("true or false", "booleans"), int: ("an int", "ints"), float: ("a number", "numbers")}
_NAMES |= {str: ("a string", "strings"), type(None): ("null", "nulls")}


def describe_type(hint: Any, *, plural: bool = False) -> str:
    """A type annotation in words: ``tuple[int, int, int]`` → "a list of 3 ints"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _NAMES:
        return _NAMES[hint][plural]
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return "paths" if plural else "a path"
    if origin is Literal:
        return ("each " if plural else "") + "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        plain = [a for a in args if a in _NAMES or typing.get_origin(a) is not None or a is Any]
        words = dict.fromkeys(describe_type(a, plural=plural) for a in (plain or args))
        return " or ".join(words)
    container = origin or hint
    if container in _SEQUENCES:
        noun = "lists" if plural else "a list"
        if not args:
            return noun
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(set(args)) == 1:
                return f"{noun} of {len(args)} {describe_type(args[0], plural=True)}"
            return f"{noun} [{', '.join(describe_type(a) for a in args)}]"
        return f"{noun} of {describe_type(args[0], plural=True)}"
    if container in _MAPPINGS:
        return "mappings" if plural else "a mapping"
    if container is abc.Callable:
        return "_target_ nodes" if plural else "a _target_ node"
    name = getattr(hint, "__name__", str(hint))
    return f"{name}s" if plural else f"a {name}"


def _kind(value: Any) -> str:
    kinds = {type(None): "null", bool: "a boolean", int: "an int", float: "a float", str: "a string"}
    return kinds.get(type(value), f"a {type(value).__name__}")
