"""Deadlines for synchronous code running in threads.

Python cannot kill a thread. When a deadline passes, :class:`Interrupter` raises an exception
*inside* the target thread with ``PyThreadState_SetAsyncExc``. The exception is delivered at
the thread's next Python bytecode: pure-Python loops stop at once; a thread blocked in C code
(``time.sleep``, a socket read, a long NumPy call) gets it when that call returns. The worker
does not wait for that: it marks the run failed at the deadline (plus a short grace), frees
the slot, and fences the stuck thread so nothing it does later is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Alarm:
    deadline: float
    seq: int
    thread_id: int = field(compare=False)
    exc_type: type[BaseException] | None = field(compare=False)
    callback: Callable[[], None] | None = field(default=None, compare=False)
    armed: bool = field(default=True, compare=False)
    fired: bool = field(default=False, compare=False)


def raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Schedule ``exc_type`` to be raised in the thread (``None`` clears a pending one)."""
    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    changed: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj)
    return changed == 1


class Interrupter:
    """One monitor thread serving every deadline of a worker."""

    def __init__(self) -> None:
        self._heap: list[_Alarm] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(
        self, seconds: float, exc_type: type[BaseException], thread_id: int | None = None
    ) -> _Alarm:
        """Raise ``exc_type`` in ``thread_id`` (default: the caller) after ``seconds``."""
        alarm = _Alarm(
            time.monotonic() + seconds,
            next(self._seq),
            thread_id if thread_id is not None else threading.get_ident(),
            exc_type,
        )
        self._push(alarm)
        return alarm

    def _push(self, alarm: _Alarm) -> None:
        with self._cond:
            heapq.heappush(self._heap, alarm)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="legato-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Alarm:
        """Run ``callback`` on the monitor thread after ``seconds`` (unless disarmed)."""
        alarm = _Alarm(time.monotonic() + seconds, next(self._seq), 0, None, callback)
        self._push(alarm)
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Cancel the alarm; returns True if it had already fired (a pending exception is cleared
        when the caller is the target thread)."""
        with self._cond:
            alarm.armed = False
            fired = alarm.fired
        if fired and alarm.thread_id == threading.get_ident():
            raise_in_thread(alarm.thread_id, None)
        return fired

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap or not self._heap[0].armed:
                    if self._heap and not self._heap[0].armed:
                        heapq.heappop(self._heap)
                        continue
                    self._cond.wait()
                wait = self._heap[0].deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(self._heap)
                if not alarm.armed:
                    continue
                alarm.fired = True
                alarm.armed = False
                if alarm.exc_type is not None:
                    raise_in_thread(alarm.thread_id, alarm.exc_type)
            if alarm.callback is not None:
                with contextlib.suppress(Exception):  # callbacks log their own errors
                    alarm.callback()
