"""Twizzler threads and views for Python programs (reference §3.5, §4.3; docs/threads.md).

    t = libtwz.Thread(work, args=(obj,), view=libtwz.View.clone())
    t.start()
    code = t.join()

A thread is a repr object (Twizzler's twzthread_repr) that twzd makes live with THRD_SPAWN. In
the caller's view it runs as a Python thread of this process; in another view, in a process
forked for it that maps that view instead (a clone of this one keeps every handle valid) and
registers with twzd (LX_THRD_HOST). Either way `join` sleeps on the repr's EXIT sync point, so
any process can wait for any thread. The exit code is the target's int return value (0 for
anything else, 1 for an uncaught exception, SystemExit's code).
"""

import os
import struct
import sys
import threading
import time
import traceback

from twzlinux.abi import constants as c
from twzlinux.abi import structs as st

from . import runtime as rt
from . import sys as tsys
from .errors import TwzError, syscall_error
from .ids import ObjID
from .object import Object

_SPAWN_ARGS = struct.Struct("<16sQQQQQQ")  # struct sys_thrd_spawn_args
_EXIT_WORD = c.OBJ_NULLPAGE_SIZE + st.THRD_SYNCS + 8 * st.THRD_SYNC_EXIT
_EXIT_CODE = c.OBJ_NULLPAGE_SIZE + st.THRD_SYNCINFOS + 8 * st.THRD_SYNC_EXIT
_RW = c.FE_READ | c.FE_WRITE
_U64 = (1 << 64) - 1
_HOST_CHECK = 0.05  # s between looks at a host process while joining its thread
_VIEW_FLAGS = (c.MIP_DFL_READ | c.MIP_DFL_WRITE | c.MIP_DFL_USE) | c.KSO_VIEW << c.OC_KSO_SHIFT


class View:
    """A view KSO: an address space that threads run in."""

    _current = None

    def __init__(self, oid: int):
        self.id = ObjID(oid)

    def __repr__(self):
        return f"<libtwz.View {self.id}>"

    def __eq__(self, other):
        return isinstance(other, View) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    @classmethod
    def current(cls) -> "View":
        rt.require()
        if cls._current is None:
            cls._current = View(ObjID.parse(os.environ["TWZ_VIEW"]))
        return cls._current

    @classmethod
    def clone(cls) -> "View":
        """A new view with the current view's entries (Twizzler's twz_view_clone): every object
        handle of this process names the same object in it. Like an unnamed object it is tied
        to this program and goes once nothing uses it."""
        retid = rt.ffi.new("uint8_t[16]")
        tsys.sys_ocreate(0, cls.current().id, _VIEW_FLAGS, int(rt.ffi.cast("uintptr_t", retid)))
        oid = st.id_unpack(rt.ffi.unpack(rt.ffi.cast("char *", retid), 16))
        tsys.sys_otie(ObjID.parse(os.environ["TWZ_THREAD"]), oid, 0)
        tsys.sys_odelete(oid, 0)
        # The copy may have caught the slot allocator's lock held by one of our threads.
        with Object._attach(oid, _RW) as v:
            rt.store64(v.address + c.OBJ_NULLPAGE_SIZE + st.VIEW_LOCK, 0)
        return View(oid)


def _after_fork_in_child() -> None:
    """A plain fork's child runs in its own copy of the view (LX_FORKED), whose ID the runtime
    put in the C environment: Python's os.environ is a copy made at start-up."""
    text = rt.lib.getenv(b"TWZ_VIEW")
    if text != rt.ffi.NULL:
        os.environ["TWZ_VIEW"] = rt.ffi.string(text).decode()
    View._current = None


os.register_at_fork(after_in_child=_after_fork_in_child)


class Thread:
    """A Twizzler thread running `target(*args)` in `view` (default: the caller's)."""

    _by_id: dict = {}
    _lock = threading.Lock()

    def __init__(self, target=None, args=(), view: View | None = None, name: str | None = None):
        self.target, self.args, self.view, self.name = target, tuple(args), view, name
        self.repr = None
        self._pid = None
        self._pythread = None
        self._code = None
        self._joined = None  # the code join returned: joining again returns it

    def __repr__(self):
        return f"<libtwz.Thread {self.id if self.repr else 'unstarted'} {self.name or ''}>"

    @property
    def id(self) -> ObjID:
        if self.repr is None:
            raise TwzError("the thread has not been started")
        return self.repr.id

    def start(self) -> None:
        """THRD_SPAWN a fresh repr, then run the target in a thread or a forked host."""
        if self.repr is not None:
            raise TwzError("a thread can be started only once")
        rt.require()
        self.repr = Object.create()
        if self.name:
            self.repr.write(c.OBJ_NULLPAGE_SIZE, self.name.encode()[:c.KSO_NAME_MAXLEN - 1] + b"\0")
        other = self.view is not None and self.view != View.current()
        args = rt.ffi.new("uint8_t[]", _SPAWN_ARGS.pack(
            st.id_pack(self.view.id if other else 0), 0, 0, 0, 0, 0, 0))
        tsys.sys_thrd_spawn(self.repr.id, int(rt.ffi.cast("uintptr_t", args)), 0, 0)
        with Thread._lock:
            Thread._by_id[self.repr.id] = self
        if not other:
            self._pythread = threading.Thread(target=self._run_here, name=self.name, daemon=True)
            self._pythread.start()
            return
        for f in (sys.stdout, sys.stderr):
            f.flush()  # or the child would write what is buffered a second time
        rt.lib.twz_rt_fork_hosts(1)
        try:
            pid = os.fork()
        finally:
            rt.lib.twz_rt_fork_hosts(0)
        if pid == 0:
            self._run_forked()
        self._pid = pid

    def _become(self, slot: int) -> None:
        r = rt.lib.twz_thread_set_repr_slot(slot)
        if r < 0:
            raise syscall_error(-r, "setting the thread's gs to its repr")

    def _run_target(self) -> int:
        try:
            r = self.target(*self.args) if self.target else 0
            return r if isinstance(r, int) and not isinstance(r, bool) else 0
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            return 1

    def _run_here(self) -> None:
        self._become(self.repr.slot)
        try:
            tsys.sys_lx_thrd_start(self.repr.id)  # so that SIGNAL reaches this Linux thread
        except TwzError as e:
            print(f"libtwz: thread {self.repr.id} cannot receive SIGNAL: {e}", file=sys.stderr)
        self._finish(self._run_target())

    def _finish(self, code: int) -> None:
        # The ID in hand, not reprid through gs: reading the repr would map it (LX_OBJFD,
        # LX_MAPPED), which a thread that never touches its repr has no other use for.
        try:
            tsys.sys_lx_thrd_exit(self.repr.id, code)
        except TwzError as e:
            print(f"libtwz: thread {self.repr.id} could not report its exit: {e}",
                  file=sys.stderr)
            return
        self._code = code & _U64

    def _run_forked(self) -> None:
        """The host process: enter the view, register, run, exit. Never returns."""
        code = 127
        try:
            view = self.view.id
            tsys.sys_lx_thrd_host(self.repr.id)
            r = rt.lib.twz_rt_enter_view(view.lo, view.hi)
            if r < 0:
                raise syscall_error(-r, f"entering view {view}")
            View._current = self.view
            # The repr was created after the view was cloned: it has no slot there yet.
            Object._handles.pop((int(self.repr.id), self.repr.perms), None)
            self.repr = Object._attach(self.repr.id, _RW)
            self._become(self.repr.slot)
            code = self._run_target()
            self._finish(code)
        except BaseException:
            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:
                    pass
            os._exit(code & 0xFF)

    def join(self, timeout=None) -> int | None:
        """Wait for the thread's end (its EXIT sync point); its exit code, or None on timeout.
        A thread whose process died before it exited reports c.THRD_EXIT_LOST."""
        if self.repr is None:
            raise TwzError("the thread has not been started")
        if self._joined is None:
            code = self._wait(timeout)
            if code is None:
                return None
            self._done(code)
        return self._joined

    def _wait(self, timeout) -> int | None:
        from .sync import sleep
        if self._pythread is not None:
            # A thread of this process ends its Linux thread only after LX_THRD_EXIT has set
            # the EXIT word, so joining the Linux thread waits for the same event, and the
            # code it reported is the one twzd stored, without mapping the repr here.
            self._pythread.join(timeout)
            if self._pythread.is_alive():
                return None
            if self._code is not None:
                return self._code
        word = self.repr.address + _EXIT_WORD
        deadline = None if timeout is None else time.monotonic() + timeout
        while not rt.load64(word):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            # A host that died before twzd knew it (before LX_THRD_HOST) leaves the word
            # unset for ever: look at it between sleeps, as a waitpid would.
            step = left if self._pid is None else min(_HOST_CHECK, left or _HOST_CHECK)
            sleep(self.repr, _EXIT_WORD, 0, step)
            if (self._pid is not None and not rt.load64(word)
                    and os.waitpid(self._pid, os.WNOHANG)[0]):
                self._pid = None
                return c.THRD_EXIT_LOST
        if self._pid is not None:
            os.waitpid(self._pid, 0)
            self._pid = None
        if self._pythread is not None:
            self._pythread.join()
        return rt.load64(self.repr.address + _EXIT_CODE)

    def _done(self, code: int) -> None:
        """Joined: this program is done with the repr. Untied and unmapped, it goes, where it
        would otherwise stay until the program exits: a program that starts threads all its
        life would pile them up in twzd and run into its object quota."""
        self._joined = code
        with Thread._lock:
            Thread._by_id.pop(self.repr.id, None)
        self.repr.untie()
        self.repr.release()

    @classmethod
    def current(cls) -> "Thread":
        """The Twizzler thread running this code, found through gs (its repr's slot address)."""
        base = rt.lib.twz_thread_repr_base()
        if base == rt.ffi.NULL:
            raise TwzError("this Linux thread is not a Twizzler thread (its gs is 0)")
        addr = int(rt.ffi.cast("uintptr_t", base))
        tid = ObjID(st.id_unpack(rt.read(addr + st.THRD_REPRID, 16)))
        with cls._lock:
            t = cls._by_id.get(tid)
            if t is None:  # the program's first thread, started by twzd
                t = cls._by_id[tid] = Thread(name="main")
                t.repr = Object._attach(tid, _RW)
            return t
