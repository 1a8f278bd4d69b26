"""The threads that run synchronous flows, and the event loop that runs ``async`` ones."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any


class ThreadSlots:
    """A fixed number of run threads. A thread stuck in a run that was abandoned (timeout
    past its grace, or a lost lease) is *retired*: a fresh thread replaces it at once, and the
    stuck one exits when its call finally returns."""

    def __init__(self, size: int, name: str = "legato-run") -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._name = name
        self._count = 0
        self._retired: set[int] = set()
        self._lock = threading.Lock()
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._count += 1
            n = self._count
        threading.Thread(target=self._loop, name=f"{self._name}-{n}", daemon=True).start()

    def _loop(self) -> None:
        me = threading.get_ident()
        while True:
            task = self._tasks.get()
            if task is None:
                return
            with contextlib.suppress(BaseException):  # tasks handle their own errors
                task()
            with self._lock:
                if me in self._retired:
                    self._retired.discard(me)
                    return

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def retire(self, thread_id: int) -> None:
        """The thread ``thread_id`` is stuck in an abandoned run: replace it."""
        with self._lock:
            self._retired.add(thread_id)
        self._spawn()

    def shutdown(self, size: int) -> None:
        for _ in range(size):
            self._tasks.put(None)


class AsyncRunner:
    """One event loop in its own thread for every ``async`` run of a worker."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="legato-async", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
