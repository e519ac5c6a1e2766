"""`on_each` (client/_branches.py): a step runs on a transaction's branches in parallel while
the process has no other such step running, and one branch after the other on the caller's
thread while it has (the hand-off to the pool then costs CPU that other transactions use)."""

from __future__ import annotations

import threading
from typing import Any

from twostep.client._branches import on_each


def thread_names(branches: list[Any]) -> dict[str, str]:
    """The thread each branch's step ran on, by branch."""
    seen = on_each(branches, lambda b: threading.current_thread().name)
    return dict(seen)


def test_a_step_alone_in_the_process_runs_the_other_branches_on_the_pool() -> None:
    names = thread_names(["orders", "billing"])

    assert names["orders"] == threading.current_thread().name
    assert names["billing"].startswith("twostep-branch")


def test_a_step_while_another_runs_takes_the_branches_in_turn_on_the_callers_thread() -> None:
    entered, release = threading.Event(), threading.Event()

    def held(branch: Any) -> None:
        entered.set()
        release.wait(timeout=30)

    other = threading.Thread(target=on_each, args=(["elsewhere"], held))
    other.start()
    try:
        assert entered.wait(timeout=30)
        names = thread_names(["orders", "billing"])
    finally:
        release.set()
        other.join()

    caller = threading.current_thread().name
    assert names == {"orders": caller, "billing": caller}
    assert thread_names(["orders", "billing"])["billing"].startswith("twostep-branch")
