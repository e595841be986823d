"""Run calls in threads released at the same moment: the races of the concurrency tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run_together(calls: Sequence[Callable[[], T]], *, timeout: float | None = None) -> list[T]:
    """Start one thread per call, release them together, return the results in order.

    The first exception a call raised is raised here, after every thread ended.
    With ``timeout``, a thread that does not reach the start within it, or
    does not end within twice it, fails the test instead of hanging it.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[index] = calls[index]()
        except BaseException as exc:  # raised in the calling thread below
            failures[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(None if timeout is None else 2 * timeout)
    assert not any(thread.is_alive() for thread in threads), "a racing call did not end"
    for failure in failures:
        if failure is not None:
            raise failure
    return results


def run_threads(count: int, call: Callable[[], T]) -> list[T]:
    """``call`` in ``count`` threads released together; their results."""
    return run_together([call] * count)
