"""Where code is running: on an event loop's thread, and which loop.

Blocking database I/O must never run on an event loop's thread, and async
SQLAlchemy runs on asyncio only; both checks need these two answers.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = [
    "on_event_loop_thread",
    "running_asyncio",
]


def running_asyncio() -> bool:
    """True when the calling thread is running an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def on_event_loop_thread() -> bool:
    """True when the calling thread runs an asyncio or trio event loop."""
    if running_asyncio():
        return True
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())
