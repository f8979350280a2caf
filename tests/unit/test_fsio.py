import asyncio
import threading

import pytest

from archipelagent.errors import Unavailable
from archipelagent.fsio import StorageIO, StorageTimeout


def test_call_returns_the_result():
    io = StorageIO(workers=1, timeout=5)
    assert asyncio.run(io.call(sum, [1, 2, 3])) == 6
    io.close()


def test_a_hung_call_times_out_and_the_loop_stays_free():
    io = StorageIO(workers=1, timeout=0.2)
    release = threading.Event()

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        with pytest.raises(StorageTimeout) as info:
            await io.call(release.wait, what="stat /mnt")
        # the pool's only worker is still stuck: the next call times out in the queue
        with pytest.raises(StorageTimeout):
            await io.call(lambda: 1)
        t.cancel()
        return ticks, info.value

    ticks, error = asyncio.run(scenario())
    release.set()
    io.close()
    assert ticks > 5  # the loop kept running while the call hung
    assert isinstance(error, Unavailable) and error.code == -48
    assert "stat /mnt" in error.message
