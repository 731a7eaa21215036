from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from bridge.budget import Budget

TICK = 0.05
LATE = 1.0  # how late an expiry may be seen on a loaded machine (never early)


async def test_a_wait_within_the_budget_returns_its_result() -> None:
    budget = Budget(1.0, tick=TICK)

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await budget.wait(answer()) == 42
    assert len(budget) == 0  # let go once over


async def test_a_wait_beyond_the_budget_is_cancelled_within_a_tick_never_early() -> None:
    budget = Budget(0.2, tick=TICK)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await budget.wait(forever())
    took = time.monotonic() - started
    assert 0.2 <= took < 0.2 + LATE  # late by a tick and the loop's lag, never early
    assert cancelled.is_set()  # the awaited work was cancelled, as by asyncio.timeout


async def test_many_waits_expire_in_order_each_at_its_own_deadline() -> None:
    budget = Budget(0.3, tick=TICK)
    loop = asyncio.get_running_loop()
    ended: dict[int, float] = {}

    async def one(i: int) -> None:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await budget.wait(asyncio.sleep(60))
        ended[i] = loop.time() - started

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.1)  # started 0.1 s apart: their deadlines too
    async with asyncio.timeout(5):  # a wait never expired fails here, not by hanging
        await asyncio.gather(*tasks)
    assert all(0.3 <= took < 0.3 + LATE for took in ended.values()), ended
    assert len(budget) == 0


async def test_waits_that_end_early_are_let_go_and_do_not_hold_the_next_deadline() -> None:
    budget = Budget(0.3, tick=TICK)
    for _ in range(1000):
        await budget.wait(asyncio.sleep(0))
    assert len(budget) == 0
    # A slow wait after many quick ones still expires on time.
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await budget.wait(asyncio.sleep(60))
    assert time.monotonic() - started < 0.3 + LATE


async def test_a_wait_that_ends_out_of_order_is_let_go_when_the_ones_before_it_end() -> None:
    budget = Budget(5.0, tick=TICK)
    slow_may_end = asyncio.Event()

    async def slow() -> None:
        await budget.wait(slow_may_end.wait())

    first = asyncio.create_task(slow())
    await asyncio.sleep(0)
    await budget.wait(asyncio.sleep(0))  # ends while the first still waits
    assert len(budget) == 2  # held behind the first, as a finished wait (no cost but memory)
    slow_may_end.set()
    await first
    assert len(budget) == 0


async def test_a_cancellation_that_is_not_the_budget_s_stays_a_cancellation() -> None:
    budget = Budget(5.0, tick=TICK)
    task = asyncio.create_task(budget.wait(asyncio.sleep(60)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(budget) == 0


def test_a_budget_outliving_its_event_loop_works_in_the_next_one() -> None:
    budget = Budget(0.1, tick=TICK)

    async def left_pending() -> None:
        # Its loop ends with this wait pending: the timer armed for it dies with the loop.
        asyncio.get_running_loop().create_task(budget.wait(asyncio.sleep(60)))
        await asyncio.sleep(0.01)

    async def expires() -> bool:
        try:
            await budget.wait(asyncio.sleep(60))
        except TimeoutError:
            return True
        return False

    uvloop.run(left_pending())
    assert uvloop.run(asyncio.wait_for(expires(), 2.0))
