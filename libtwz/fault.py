"""Twizzler faults in Python: per-type handlers (Twizzler's twz_fault_set) and delivery to the
thread that took the fault.

A fault arrives as a `TwzFault` exception (FaultObject, FaultNull, ...) carrying the fault-info:
`addr`, `ip`, `objid`, `slot`, `flags`, and `info` (FAULT_EXCEPTION: (x86 vector, error code);
FAULT_PAGE: (page number,); FAULT_SIGNAL: the four longs of the SIGNAL call), and `tid`, the
Linux thread that took it.

- Synchronous faults -- libtwz's accessors (`Object.read`, `write`, `load_ptr`, ...), guarded
  calls (`call`), pointer resolution (FAULT_PPTR) -- are raised in the faulting thread at once.
  If a handler is set for the type, it runs there first, and if it returns the operation is
  retried (a handler that fixes the cause, as in Twizzler).
- A fault taken by a raw access (a memoryview from `obj.view()`) or a FAULT_SIGNAL cannot unwind
  the C code it interrupted: the runtime completes the access (zeros read, writes dropped),
  queues the record and signals the main thread, where Python runs signal handlers. There, a
  fault of the main thread is handled (a handler runs, no retry: the access is done) or raised.
  A fault of another thread runs the handler in the main thread if one is set -- the semantics
  of Python's own signal handlers -- and is otherwise raised in the faulting thread with
  PyThreadState_SetAsyncExc, at its next bytecode boundary. The C signal handler cannot do that
  itself: PyThreadState_SetAsyncExc takes the interpreter's locks and allocates, which no
  async-signal-safe code may do, so the record waits for the main thread's Python handler,
  which runs holding the GIL.
- A fault nobody handles ends the program: in the main thread as any uncaught exception (its
  message names the fault, address, object and slot; exit status 1); in another thread the same
  message, then exit status TWZ_FAULT_EXIT_BASE + fault, as for a native program. twzd and other
  programs are unaffected.
"""

import ctypes
import os
import sys
import threading

from twzlinux.abi import constants as c

from .errors import TwzFault, make_fault

RETRY_MAX = 1000  # a handler that returns without fixing the cause must not loop forever
_handlers: dict = {}


def set_handler(fault: int, fn):
    """Call fn(exc) for faults of type `fault` (None: raise them again); returns the old one."""
    if not 0 <= fault < c.NUM_FAULTS or fault == c.FAULT_FAULT:
        raise ValueError(f"no fault type {fault} to handle (0..{c.NUM_FAULTS - 1}, not "
                         "FAULT_FAULT)")
    old = _handlers.get(fault)
    if fn is None:
        _handlers.pop(fault, None)
    else:
        _handlers[fault] = fn
    return old


def get_handler(fault: int):
    return _handlers.get(fault)


def from_record(rec) -> TwzFault:
    """The exception for a runtime fault record."""
    info, detail = (), ""
    if rec.fault == c.FAULT_EXCEPTION:
        info = (rec.data[0], rec.data[1])
        detail = f"x86 vector {rec.data[0]}, error code {rec.data[1]:#x}"
    elif rec.fault == c.FAULT_PAGE:
        info = (rec.data[0],)
        detail = f"page {rec.data[0]:#x} cannot be backed"
    elif rec.fault == c.FAULT_SIGNAL:
        info = tuple(v - (1 << 64) if v >> 63 else v for v in rec.data)
        detail = f"args {list(info)}"
    exc = make_fault(rec.fault, addr=rec.addr, ip=rec.ip,
                     objid=(rec.objid_hi << 64) | rec.objid_lo, slot=rec.slot, flags=rec.flags,
                     detail=detail)
    exc.info, exc.tid = info, rec.tid or threading.get_native_id()
    return exc


def handle(exc: TwzFault) -> None:
    """Run the handler for exc's type in this thread; raise exc if there is none."""
    fn = _handlers.get(exc.fault)
    if fn is None:
        raise exc
    fn(exc)


def retrying(op, *args):
    """op(*args), handing its faults to the handlers and retrying while they return."""
    for _ in range(RETRY_MAX):
        try:
            return op(*args)
        except TwzFault as exc:
            handle(exc)
    return op(*args)


def _async_class(exc: TwzFault) -> type:
    # PyThreadState_SetAsyncExc takes a class, instantiated without arguments in the target
    # thread: a one-off subclass carries this fault's details.
    base = type(exc)

    def __init__(self, *_):
        base.__init__(self, str(exc), addr=exc.addr, ip=exc.ip, objid=exc.objid, slot=exc.slot,
                      flags=exc.flags)
        self.info, self.tid = exc.info, exc.tid
        _awaiting.discard(exc.tid)  # raised in its thread now: a later fault is a new one

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__})


def _die(exc: TwzFault, where: str) -> None:
    sys.stderr.write(f"twz: unhandled {exc} in {where}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(c.TWZ_FAULT_EXIT_BASE + exc.fault)


# Threads given a fault exception that they have not raised yet. A thread keeps faulting on the
# same access until it reaches a point where Python raises the exception; those repeats are the
# same fault and must not queue a second exception into its except clause.
# Repeats can also still be queued after the thread has raised the exception and ended, so a
# thread that was given one and is gone now is not a reason to end the program.
_awaiting: set = set()
_given: set = set()


def _raise_in(tid: int, exc: TwzFault) -> None:
    if tid in _awaiting:
        return
    thread = next((t for t in threading.enumerate() if t.native_id == tid), None)
    if thread is None:
        if tid in _given:
            return
        _die(exc, f"thread {tid}")  # a thread Python does not run: a C thread
    set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    if set_exc(ctypes.c_ulong(thread.ident), ctypes.py_object(_async_class(exc))) != 1:
        _die(exc, f"thread {tid}")
    _awaiting.add(tid)
    _given.add(tid)


def deliver_queued(take) -> None:
    """The main thread's Python signal handler: `take(rec)` pops queued records."""
    from twzlinux._twzrt import ffi

    me = threading.get_native_id()
    own = []
    rec = ffi.new("struct twz_fault_record *")
    while take(rec):
        exc = from_record(rec)
        if exc.tid == me:
            own.append(exc)
        elif exc.fault in _handlers:
            handle(exc)
        else:
            _raise_in(exc.tid, exc)
    for exc in own:
        handle(exc)


def _thread_excepthook(args) -> None:
    if isinstance(args.exc_value, TwzFault):
        sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)
        _die(args.exc_value, f"thread {getattr(args.thread, 'name', '?')}")
    _previous_hook(args)


_previous_hook = threading.excepthook


def install() -> None:
    """An unhandled fault in any Python thread ends the program (called by libtwz's start-up)."""
    threading.excepthook = _thread_excepthook
