"""libtwz: the Twizzler programming model for Python programs run by `twzrun`.

    import libtwz
    lst = libtwz.Object.create(persist=True, name="/examples/list")
    lst.view()[0x1000:0x1005] = b"hello"

Importing libtwz in a process that twzd started sets the process up (the slot window, the
fault handler, the view) before the program's first line runs.
"""

from . import names, sys
from .errors import (FaultException, FaultNull, FaultObject, FaultPage, FaultPptr, FaultSctx,
                     FaultSignal, TwzError, TwzFault)
from .ids import ObjID
from .object import Object, stat
from .runtime import init_from_env as _init_from_env
from .sync import Mutex, event_clear, event_poll, event_wait, event_wake, sleep, thread_sync, wake
from .thread import Thread, View

_init_from_env()

__all__ = ["Object", "ObjID", "TwzError", "TwzFault", "FaultObject", "FaultNull",
           "FaultException", "FaultSctx", "FaultPage", "FaultPptr", "FaultSignal", "names",
           "stat", "sys", "Thread", "View", "Mutex", "thread_sync", "sleep", "wake",
           "event_wait", "event_wake", "event_clear", "event_poll"]
