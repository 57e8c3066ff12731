"""How an actor process ends when Ray stops it: at once, and quietly.

Ray ends a worker with SIGTERM, and its own handler raises SystemExit wherever the process happens to be: in
a Redis client's `__del__`, for one, which then prints "Exception ignored in: ... Traceback" to the driver's
terminal when a run stops its learners (a user reads that as a second failure). Nothing an actor holds needs
Python's teardown: checkpoints are written by the driver's calls, which have returned; sockets and memory are
the kernel's to free.
"""
from __future__ import annotations

import os
import signal
import threading


def exit_quietly_on_sigterm() -> None:
    """From the actor's constructor (its main thread: a sync actor's tasks run there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
