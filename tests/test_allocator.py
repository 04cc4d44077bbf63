"""The CPU allocator setting (rsrefseg.allocator): freed blocks are kept, the opt-out is honoured."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import rsrefseg.allocator as allocator

# 20 rounds of a 40 MB block freed and allocated again, then the page faults of the last 5 rounds:
# glibc serves a block that large from a fresh mmap and unmaps it on free unless told to keep it
_FAULTS = textwrap.dedent(
    """
    import resource, sys
    from rsrefseg.allocator import configure_cpu_allocator
    print(configure_cpu_allocator())
    import torch
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(10 << 20)  # 40 MB of float32, every page written
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sum(faults[-5:]))
    """
)


def _faults(choice: str) -> tuple[str, int]:
    env = dict(os.environ, **{allocator.ENV: choice})
    command = [sys.executable, "-c", _FAULTS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    applied, faults = result.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting acts on glibc (Linux) only")
def test_retain_reuses_freed_blocks_where_the_system_default_faults_them_in_again():
    applied, retained = _faults("retain")
    if applied == "unavailable":
        pytest.skip("not glibc: the C library's own behaviour is kept")
    assert applied == "retain"
    system_applied, system = _faults("system")
    assert system_applied == "system"
    pages = 5 * (40 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert system >= 0.9 * pages  # every round faulted its 40 MB in again
    assert retained <= 0.05 * pages  # the kept block is reused


def test_an_unknown_choice_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match=r"RSREFSEG_CPU_ALLOCATOR='jemalloc': expected one of retain, sys"):
        allocator.configure_cpu_allocator()


def test_the_choice_is_applied_once_per_process(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.configure_cpu_allocator("system") == "system"
    # a later call reports what is in effect rather than switching the heap's policy midway
    assert allocator.configure_cpu_allocator("retain") == "system"
