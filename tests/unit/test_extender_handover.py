"""The extender's port handover: the old process serves until its successor is synced and waiting."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from scheduler_plugin.handover import SUCCESSOR, Handover


def test_successor_waits_for_the_lock_and_the_old_one_hands_over(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, float, str]:
        old, new = Handover(tmp_path, grace=5), Handover(tmp_path, grace=5)
        assert await old.acquire() < 0.5
        assert not old.successor_ready()
        taking = asyncio.create_task(new.acquire())
        await asyncio.sleep(0.3)
        assert not taking.done(), "the successor took the lock the serving process holds"
        handed = await old.wait_for_successor()  # returns as soon as the successor is announced
        await asyncio.sleep(0.2)
        assert not taking.done()
        old.release()
        waited = await asyncio.wait_for(taking, 2)
        text = (tmp_path / SUCCESSOR).read_text()
        new.release()
        return handed, waited, text

    handed, waited, text = asyncio.run(scenario())
    assert handed
    assert waited >= 0.5
    assert text == ""  # cleared by the new holder: the next stop waits for the next successor


def test_without_a_successor_the_old_one_serves_out_its_grace(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, float]:
        h = Handover(tmp_path, grace=0.4)
        await h.acquire()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ok = await h.wait_for_successor()
        h.release()
        return ok, loop.time() - t0

    ok, took = asyncio.run(scenario())
    assert not ok and took >= 0.4


def test_a_crashed_holder_frees_the_lock(tmp_path: Path) -> None:
    """The kernel drops an flock with its process: a restarted container takes over at once."""
    pid = os.fork()
    if pid == 0:  # child: take the lock and die without releasing it
        asyncio.run(Handover(tmp_path, grace=1).acquire())
        os._exit(0)
    os.waitpid(pid, 0)

    async def take() -> float:
        h = Handover(tmp_path, grace=1)
        waited = await asyncio.wait_for(h.acquire(), 2)
        h.release()
        return waited

    assert asyncio.run(take()) < 0.5
