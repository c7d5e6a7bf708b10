"""respan_gateway.deadline.Timeouts: asyncio.timeout's behaviour for many concurrent waits on one timer.

The reliability plugin's attempt limits run on it (their end-to-end tests are in plugins/reliability);
these pin the semantics asyncio.timeout has and the shared handle must keep.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from respan_gateway.deadline import Timeouts


def test_each_wait_expires_at_its_own_limit_while_the_others_go_on() -> None:
    async def main() -> None:
        timeouts = Timeouts(asyncio.get_running_loop())

        async def wait(limit: float, work: float) -> str:
            try:
                async with timeouts.within(limit):
                    await asyncio.sleep(work)
            except TimeoutError:
                return "timed out"
            await asyncio.sleep(0.05)  # no late cancellation reaches the task after its block
            return "done"

        started = time.monotonic()
        long = asyncio.ensure_future(wait(5.0, 0.3))
        await asyncio.sleep(0.01)  # the handle is armed for the long wait first, then moved earlier
        short = asyncio.ensure_future(wait(0.1, 5.0))
        assert await short == "timed out"
        assert 0.09 <= time.monotonic() - started < 0.5
        assert await long == "done"
        assert timeouts.waits == {}

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    async def main() -> None:
        timeouts = Timeouts(asyncio.get_running_loop())

        async def wait() -> None:
            async with timeouts.within(5.0):
                await asyncio.sleep(5.0)

        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert timeouts.waits == {}

    asyncio.run(main())


def test_a_limit_already_past_expires_at_the_first_wait() -> None:
    async def main() -> None:
        timeouts = Timeouts(asyncio.get_running_loop())
        with pytest.raises(TimeoutError):
            async with timeouts.within(0):
                await asyncio.sleep(1.0)
        async with timeouts.within(0):
            pass  # nothing awaited: nothing to cancel, no error
        await asyncio.sleep(0.02)  # and its expiry, due meanwhile, cancels nothing later

    asyncio.run(main())


def test_many_waits_share_one_timer_handle() -> None:
    async def main() -> None:
        timeouts = Timeouts(asyncio.get_running_loop())

        async def wait(n: int) -> None:
            async with timeouts.within(10.0 + n / 1000):
                await asyncio.sleep(0.01)

        first = asyncio.ensure_future(wait(0))
        await asyncio.sleep(0)
        handle = timeouts.handle
        await asyncio.gather(first, *(wait(n) for n in range(1, 200)))
        assert handle is not None and timeouts.handle is handle  # later limits never moved it: one timer for all

    asyncio.run(main())
