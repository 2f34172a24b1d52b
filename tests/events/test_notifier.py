"""The in-process wake-up: every waiter wakes on a notification, from any thread."""

from __future__ import annotations

import asyncio
import threading

from service.events import service as events_service
from service.events.notifier import EventNotifier, feed_notifier


class TestEventNotifier:
    async def test_wakes_every_waiter(self) -> None:
        notifier = EventNotifier()
        waiters = [asyncio.create_task(notifier.wait(10)) for _ in range(3)]
        while len(notifier._waiters) < 3:
            await asyncio.sleep(0)
        notifier.notify()
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert notifier.generation == 1
        assert notifier._waiters == set()

    async def test_times_out_without_a_notification(self) -> None:
        notifier = EventNotifier()
        assert await notifier.wait(0.01) is False
        assert await notifier.wait(0) is False
        assert notifier._waiters == set()

    async def test_notify_from_another_thread(self) -> None:
        notifier = EventNotifier()
        waiter = asyncio.create_task(notifier.wait(10))
        while not notifier._waiters:
            await asyncio.sleep(0)
        thread = threading.Thread(target=notifier.notify)
        thread.start()
        assert await waiter is True
        thread.join()

    async def test_notify_accepts_a_notifier_an_app_state_or_nothing(self) -> None:
        mine = EventNotifier()

        class State:
            events_notifier = mine

        events_service.notify(mine)
        events_service.notify(State())
        assert mine.generation == 2
        before = feed_notifier.generation
        events_service.notify()
        events_service.notify(object())
        assert feed_notifier.generation == before + 2
