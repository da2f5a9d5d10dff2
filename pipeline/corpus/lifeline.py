"""A worker process exits when the main process that started it dies.

A SIGKILLed main process cannot stop its workers. A worker blocked on the
task queue would then wait for ever (it holds the queue's write end itself),
and so would the forkserver (each worker holds the pipe whose end tells it
that the main process is gone), keeping the main process's stdout open. So
each worker polls the main process from a daemon thread and exits with it.
"""

from __future__ import annotations

import os
import threading
import time

import psutil


def exit_with(main_pid: int) -> None:
    """Start the thread that ends this process once `main_pid` is gone."""
    threading.Thread(target=_watch, args=(main_pid,), daemon=True).start()


def _watch(main_pid: int) -> None:
    # psutil, not os.kill(pid, 0): a killed main process stays a zombie until
    # its parent reaps it, and that parent may be waiting for our stdout to close.
    try:
        main = psutil.Process(main_pid)
        while main.is_running() and main.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.5)
    except psutil.Error:
        pass
    os._exit(1)
