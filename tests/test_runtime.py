"""Tests of metalib.runtime: the device and budget chosen from the environment, seeding, thread
pinning, the cache folder and the progress bar."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch

from metalib import runtime
from metalib.runtime import (
    Budget,
    budget,
    cache_dir,
    device,
    progress,
    seed_everything,
    set_threads,
)


@pytest.fixture
def no_env(monkeypatch):
    """Start each test from an environment without any METALIB_* variable."""
    for name in ("DEVICE", "BUDGET", "CACHE", "THREADS", "PROGRESS", "SEED"):
        monkeypatch.delenv(f"METALIB_{name}", raising=False)
    return monkeypatch


@pytest.fixture
def restore_threads():
    """set_threads changes a process-wide setting: put it back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# device ------------------------------------------------------------------------------------------


def test_device_forced_cpu(no_env):
    no_env.setenv("METALIB_DEVICE", "cpu")
    assert device() == torch.device("cpu")
    no_env.setenv("METALIB_DEVICE", "  cpu \n")  # surrounding blanks are ignored
    assert device() == torch.device("cpu")


def test_device_cuda_without_cuda_is_an_error(no_env):
    no_env.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        no_env.setenv("METALIB_DEVICE", name)
        with pytest.raises(ValueError, match="METALIB_DEVICE.*CUDA"):
            device()


def test_device_cuda_when_present_is_returned(no_env):
    # torch.device("cuda:1") is a plain value: building it needs no GPU
    no_env.setattr(torch.cuda, "is_available", lambda: True)
    no_env.setenv("METALIB_DEVICE", "cuda:1")
    assert device() == torch.device("cuda", 1)


def test_device_mps_without_mps_is_an_error(no_env):
    no_env.setattr(torch.backends.mps, "is_available", lambda: False)
    no_env.setenv("METALIB_DEVICE", "mps")
    with pytest.raises(ValueError, match="METALIB_DEVICE='mps' asks for MPS"):
        device()


@pytest.mark.parametrize("garbage", ["gpu", "cpuu", "cuda:x", "42"])
def test_device_garbage_is_an_error(no_env, garbage):
    no_env.setenv("METALIB_DEVICE", garbage)
    with pytest.raises(ValueError, match=f"METALIB_DEVICE='{garbage}' is not a torch device"):
        device()


@pytest.mark.parametrize("cuda", [True, False])
def test_device_unset_or_empty_follows_cuda_availability(no_env, cuda):
    no_env.setattr(torch.cuda, "is_available", lambda: cuda)
    expected = torch.device("cuda" if cuda else "cpu")
    assert device() == expected
    no_env.setenv("METALIB_DEVICE", "   ")  # blank counts as unset
    assert device() == expected


# seed_everything --------------------------------------------------------------------------------


def _draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(5), np.random.rand(5), random.random()


def test_seed_everything_repeats_every_generator():
    seed_everything(7)
    t1, n1, r1 = _draws()
    seed_everything(7)
    t2, n2, r2 = _draws()
    assert torch.equal(t1, t2) and np.array_equal(n1, n2) and r1 == r2
    seed_everything(8)
    t3, n3, r3 = _draws()
    assert not torch.equal(t1, t3) and not np.array_equal(n1, n3) and r1 != r3


def test_seed_everything_returns_a_fresh_seeded_generator():
    g = seed_everything(11)
    assert isinstance(g, torch.Generator)
    assert g.initial_seed() == 11
    expected = torch.rand(4, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(torch.rand(4, generator=g), expected, rtol=0, atol=0)
    # the returned generator is separate from the global one: drawing from it leaves torch.rand
    # where seeding alone put it
    seed_everything(11)
    reference = torch.rand(3)
    g = seed_everything(11)
    torch.rand(10, generator=g)
    torch.testing.assert_close(torch.rand(3), reference, rtol=0, atol=0)


def test_seed_everything_large_seed_wraps_for_numpy():
    seed_everything(2**32 + 5)
    a = np.random.rand(3)
    np.random.seed(5)
    np.testing.assert_array_equal(a, np.random.rand(3))


@pytest.mark.parametrize("bad", [-1, -(2**40), 1.5, "3", None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        seed_everything(bad)


def test_seed_shift_moves_every_seed_by_the_same_amount(no_env):
    assert runtime.seed_shift() == 0
    no_env.setenv("METALIB_SEED", "3")
    assert runtime.seed_shift() == 3
    g = seed_everything(4)  # seeds 4 + 3
    assert g.initial_seed() == 7
    drawn = torch.rand(3)
    no_env.delenv("METALIB_SEED")
    seed_everything(7)
    torch.testing.assert_close(torch.rand(3), drawn, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_seed_shift_rejects_what_is_not_a_count(no_env, bad):
    no_env.setenv("METALIB_SEED", bad)
    with pytest.raises(ValueError, match="METALIB_SEED=.* is not a non-negative integer"):
        seed_everything(0)


# set_threads ------------------------------------------------------------------------------------


def test_set_threads_explicit(no_env, restore_threads):
    no_env.setenv("METALIB_THREADS", "3")  # an explicit count wins over the environment
    assert set_threads(2) == 2
    assert torch.get_num_threads() == 2
    assert set_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_set_threads_from_env(no_env, restore_threads):
    no_env.setenv("METALIB_THREADS", " 3 ")
    assert set_threads() == 3
    assert torch.get_num_threads() == 3


def test_set_threads_default_is_cores_at_most_4(no_env, restore_threads):
    no_env.setattr(os, "cpu_count", lambda: 16)
    assert set_threads() == 4
    no_env.setattr(os, "cpu_count", lambda: 2)
    assert set_threads() == 2
    no_env.setattr(os, "cpu_count", lambda: None)  # unknown: one thread
    assert set_threads() == 1
    assert torch.get_num_threads() == 1


def test_set_threads_rejects_less_than_one(no_env, restore_threads):
    before = torch.get_num_threads()
    for n in (0, -2):
        with pytest.raises(ValueError, match="thread count must be at least 1"):
            set_threads(n)
    no_env.setenv("METALIB_THREADS", "0")
    with pytest.raises(ValueError, match="thread count must be at least 1, got 0"):
        set_threads()
    assert torch.get_num_threads() == before  # nothing was changed on the way to the error


def test_set_threads_non_numeric_env_names_the_variable(no_env, restore_threads):
    no_env.setenv("METALIB_THREADS", "four")
    with pytest.raises(ValueError, match="METALIB_THREADS"):
        set_threads()


# budget ------------------------------------------------------------------------------------------


def test_budget_default_and_long(no_env):
    assert budget() == Budget("default")
    no_env.setenv("METALIB_BUDGET", "")
    assert budget().name == "default"
    no_env.setenv("METALIB_BUDGET", " long ")
    assert budget() == Budget("long")
    assert budget().pick(default=300, long=5000) == 5000


@pytest.mark.parametrize("bad", ["fast", "LONG", "Default"])
def test_budget_bad_name(no_env, bad):
    no_env.setenv("METALIB_BUDGET", bad)
    with pytest.raises(ValueError, match=f"METALIB_BUDGET='{bad}' is not a budget"):
        budget()


def test_budget_pick():
    assert Budget("default").pick(default=1, long=2) == 1
    assert Budget("long").pick(default=1, long=2) == 2
    sentinel_default, sentinel_long = object(), object()  # values are returned, not copied
    assert Budget("long").pick(sentinel_default, sentinel_long) is sentinel_long
    assert Budget("default").pick(sentinel_default, sentinel_long) is sentinel_default
    assert runtime.BUDGETS == ("default", "long")


# cache_dir ---------------------------------------------------------------------------------------


def test_cache_dir_from_env_is_created(no_env, tmp_path):
    target = tmp_path / "a" / "b"
    no_env.setenv("METALIB_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()
    assert cache_dir() == target  # a second call finds it in place


def test_cache_dir_expands_user_and_defaults_to_home(no_env, tmp_path):
    no_env.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "metalib"
    assert (tmp_path / ".cache" / "metalib").is_dir()
    no_env.setenv("METALIB_CACHE", "~/elsewhere")
    assert cache_dir() == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere").is_dir()


# progress ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("off", ["0", "false", "No", " OFF "])
def test_progress_off_by_env(no_env, off):
    no_env.setenv("METALIB_PROGRESS", off)
    out = io.StringIO()
    bar = progress(range(7), file=out, desc="x")
    assert bar.disable is True
    assert list(bar) == list(range(7))
    assert out.getvalue() == ""


def test_progress_on_by_default_and_iterates_everything(no_env):
    out = io.StringIO()
    bar = progress(["a", "b", "c"], file=out, desc="items")
    assert bar.disable is False
    assert list(bar) == ["a", "b", "c"]
    assert "3/3" in out.getvalue() and "items" in out.getvalue()


def test_progress_explicit_disable_wins_and_total_is_passed(no_env):
    no_env.setenv("METALIB_PROGRESS", "1")
    bar = progress(iter(range(4)), disable=True, total=4)
    assert bar.disable is True and bar.total == 4
    assert sum(bar) == 6
    no_env.setenv("METALIB_PROGRESS", "0")
    with progress(total=5) as bar:  # manual bar without an iterable
        bar.update(5)
        assert bar.disable is True


# timing and memory on a device --------------------------------------------------------------------


def test_timing_claim_is_asserted_on_the_cpu_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a plain value: no GPU needed
    assert runtime.timing_claim(True, "A is slower than B", cpu) is True
    with pytest.raises(AssertionError, match="on the CPU, A is slower than B"):
        runtime.timing_claim(False, "A is slower than B", cpu)
    assert runtime.timing_claim(False, "A is slower than B", gpu) is False  # shown, not asserted
    assert runtime.timing_claim(True, "A is slower than B", "meta") is True


def test_timing_claim_follows_the_runtime_device(no_env):
    no_env.setenv("METALIB_DEVICE", "cpu")
    with pytest.raises(AssertionError):
        runtime.timing_claim(False, "claim")


def test_synchronize_and_peak_memory_without_an_accelerator():
    runtime.synchronize()  # nothing queued anywhere: returns at once
    calls = []
    for dev in (torch.device("cpu"), torch.device("meta")):
        assert runtime.device_peak_mb(lambda: calls.append(1), dev) is None
    assert calls == []  # nothing to measure: fn is not run


def test_describe_names_the_device_and_torch():
    text = runtime.describe(torch.device("cpu"))
    assert text.startswith("cpu (") and f"torch {torch.__version__}" in text
