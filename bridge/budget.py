"""Time budgets shared by many waits of the same length: the ack budget of every publish, the
body deadline of every request.

`asyncio.timeout` makes and closes an event-loop timer per wait (with uvloop, a libuv timer:
~6 us a wait; 27k instructions a notification for the ack budget alone, callgrind). Waits
that all last `seconds` expire in the order they began, so one deque holds them and one
timer, re-armed at most every `tick`, expires the overdue ones: an append and a pop a wait.
A budget is kept to within `tick` (late, never early), as the connection deadlines of
`http.protocol` are.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class _Wait:
    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[object]) -> None:
        self.deadline = deadline
        self.task: asyncio.Task[object] | None = task  # None once the wait is over
        self.expired = False
        self.cancelling = task.cancelling()  # cancellations pending before the wait: not ours


class Budget:
    def __init__(self, seconds: float, tick: float = 0.1) -> None:
        self.seconds = seconds
        self.tick = tick
        self._waits: deque[_Wait] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """Waits held (those over are let go lazily)."""
        return len(self._waits)

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` within the budget; TimeoutError when it runs out (the awaitable
        is cancelled, as by `asyncio.timeout`)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - a coroutine is always awaited from a task
            raise RuntimeError("Budget.wait() outside a task")
        wait = _Wait(loop.time() + self.seconds, task)
        waits = self._waits
        waits.append(wait)
        if self._timer is None or self._loop is not loop:  # none armed, in this loop
            self._loop = loop
            self._timer = loop.call_at(wait.deadline, self._expire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Ours when the timer expired this wait and no other cancellation is pending.
            if wait.expired and task.uncancel() <= wait.cancelling:
                raise TimeoutError from None
            raise
        finally:
            wait.task = None
            while waits and waits[0].task is None:  # most end in the order they began
                waits.popleft()

    def _expire(self) -> None:
        loop, waits = self._loop, self._waits
        assert loop is not None  # noqa: S101 - armed only with a loop
        now = loop.time()
        while waits and (waits[0].task is None or waits[0].deadline <= now):
            wait = waits.popleft()
            if wait.task is not None:
                wait.expired = True
                wait.task.cancel()
        self._timer = None
        if waits:
            due = max(waits[0].deadline, now + self.tick)
            self._timer = loop.call_at(due, self._expire)
