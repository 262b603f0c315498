"""The run context: set at the entry, read below it, never a silent default."""

from __future__ import annotations

import threading
from unittest.mock import MagicMock

import pytest

from phasegate import runctx
from phasegate.clock import RealClock


def a_context(name: str) -> runctx.RunContext:
    return runctx.RunContext(cluster=MagicMock(name=name), metrics=MagicMock(), notifier=MagicMock(),
                             clock=RealClock())


def test_unset_context_is_an_error_naming_how_to_set_one():
    with pytest.raises(runctx.RunContextMissing, match=r"runctx\.use"):
        runctx.get()


def test_use_sets_the_context_and_restores_the_outer_one():
    outer, inner = a_context("outer"), a_context("inner")
    with runctx.use(outer):
        with runctx.use(inner):
            assert runctx.get() is inner
        assert runctx.get() is outer
    assert runctx.peek() is None


def test_each_thread_sees_only_the_context_it_was_given():
    seen: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def rollout(name: str) -> None:
        with runctx.use(a_context(name)):
            barrier.wait()  # both contexts are set at once
            seen[name] = runctx.get().cluster._mock_name

    threads = [threading.Thread(target=rollout, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_phasegates_own_threads_carry_the_context_and_a_plain_thread_does_not():
    ctx = a_context("rollout")
    got: dict[str, object] = {}
    with runctx.use(ctx):
        runctx.run_in_thread(lambda: got.setdefault("copied", runctx.peek())).join()
        plain = threading.Thread(target=lambda: got.setdefault("plain", runctx.peek()))
        plain.start()
        plain.join()
    assert got == {"copied": ctx, "plain": None}


def test_a_failing_observer_never_breaks_the_rollout():
    def broken(*_args):
        raise RuntimeError("display crashed")

    ctx = a_context("x").with_(on_event=broken, on_pause=broken)
    ctx.tell_event({"event": "round"})
    ctx.tell_pause("run", "canary", [], "advance")
