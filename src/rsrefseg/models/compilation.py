"""``torch.compile`` of a network part, with its compile time logged once (model.compile).

Compilation is lazy: it happens on the first call, so the first call's wall time (compile
included) is what is logged. A later recompilation (another batch size under ``dynamic=False``,
train ↔ eval mode, grad ↔ no-grad) is not logged again; PyTorch logs those with
``TORCH_LOGS=recompiles``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class CompiledCall:
    """``torch.compile(fn, dynamic=False, mode=mode)`` that logs how long its first call took.

    Args:
        name: what is compiled, for the log line (``clip.encode_image``).
        fn: the function or bound method to compile.
        mode: ``torch.compile``'s mode (inductor only).
        backend: ``torch.compile``'s backend: ``inductor`` (generated kernels) or e.g. ``aot_eager``.

    Attributes:
        first_call_seconds: wall time of the first call (compilation included), None before it.
    """

    def __init__(
        self, name: str, fn: Callable[..., Any], mode: CompileMode = "default", backend: str = "inductor"
    ) -> None:
        self.name, self.mode, self.backend = name, mode, backend
        # a mode is an inductor setting; other backends (aot_eager: graph capture without code
        # generation, which the tests use) take none
        options = {"mode": mode} if backend == "inductor" else {}
        self.compiled = torch.compile(fn, dynamic=False, backend=backend, **options)
        self.first_call_seconds: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_call_seconds is not None:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        self.first_call_seconds = time.perf_counter() - start
        log.info(
            "torch.compile of %s (backend=%s, mode=%s): first call %.1f s, compilation included",
            self.name,
            self.backend,
            self.mode,
            self.first_call_seconds,
        )
        return out


def compile_method(
    owner: Any, method: str, *, name: str, mode: CompileMode = "default", backend: str = "inductor"
) -> CompiledCall:
    """Replace ``owner.<method>`` by its compiled version, on this instance only.

    The instance attribute shadows the class's method, so the module tree, parameter names and
    state-dict keys are unchanged (``torch.compile`` of a module would wrap it as ``_orig_mod``).
    """
    compiled = CompiledCall(name, getattr(owner, method), mode, backend)
    setattr(owner, method, compiled)
    return compiled
