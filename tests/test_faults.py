"""Every Twizzler fault, produced by a program and delivered the Twizzler way: native programs
through the view's fault handler (upcall frame, FAULT_FAULT wrapping, retry on return), Python
programs as exceptions in the faulting thread with per-type handlers (libtwz/fault.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import twz_env
from twzlinux.abi import constants as c

NATIVE = Path(__file__).resolve().parent / "native" / "faults.c"


@pytest.fixture(scope="module")
def faults_exe(tmp_path_factory):
    from twzlinux.native import INCLUDE_DIR

    exe = tmp_path_factory.mktemp("faults") / "faults"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{INCLUDE_DIR}", "-o", str(exe),
                    str(NATIVE), "-pthread"], check=True)
    return exe


def test_native_faults_reach_the_view_handler_and_a_returning_handler_retries(twzrun,
                                                                              faults_exe):
    r = twzrun(faults_exe, "handled")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "EXCEPTION code=0 ud=ud",    # divide error, x86 vector 0
        "EXCEPTION code=6 ud=ud",    # invalid opcode (ud2)
        "EXCEPTION code=3 ud=ud",    # breakpoint: the handler returns, the program goes on
        "after int3",
        f"OBJECT flags={c.FAULT_OBJECT_WRITE | c.FAULT_OBJECT_NOMAP:#x} slot=0x10200",
        "retried 42",                # the handler mapped the slot; the write was retried
        f"NULL addr={(0x10200 << 30) + 0x10:#x}",
        "SIGNAL 1 -2 3 1099511627776",  # the SIGNAL syscall to our own thread
        "signal returned 0",
        f"PPTR info={c.FAULT_PPTR_INVALID} ptr=0x1234",  # twz_fault_raise from C
        "done",
    ]


def test_native_faults_on_a_thread_without_an_alternate_stack(twzrun, faults_exe):
    # its signal handler runs on the faulting stack: the upcall frame must stay clear of it
    r = twzrun(faults_exe, "thread")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "EXCEPTION code=6 ud=t", "EXCEPTION code=3 ud=t",
        f"OBJECT flags={c.FAULT_OBJECT_WRITE | c.FAULT_OBJECT_NOMAP:#x} slot=0x10210",
        "thread retried 43"]


def test_python_unguarded_exception_ends_the_program(twzrun):
    r = twzrun("""
        import ctypes, mmap
        import libtwz
        code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        code[:2] = b"\\x0f\\x0b"  # ud2, called through ctypes: no guard can take it
        ctypes.CFUNCTYPE(None)(ctypes.addressof(ctypes.c_char.from_buffer(code)))()
        print("not reached")
    """)
    assert r.returncode == c.TWZ_FAULT_EXIT_BASE + c.FAULT_EXCEPTION, r.stderr
    assert "twz: unhandled FAULT_EXCEPTION at 0x" in r.stderr and r.stdout == ""


def test_native_dbl_fault_handler_gets_fault_fault_with_twizzlers_frame(twzrun, faults_exe):
    r = twzrun(faults_exe, "dbl")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"FAULT_FAULT of {c.FAULT_NULL} len=16 addr={(0x10200 << 30) + 0x40:#x} "
                        "rip_ok=1 rsp_ok=1 aligned=1\n")


def test_native_raw_view_fault_handler_gets_rdi_fault_rsi_info(twzrun, faults_exe):
    r = twzrun(faults_exe, "raw")
    assert (r.returncode, r.stdout) == (0, f"raw fault={c.FAULT_EXCEPTION} code=6\n"), r.stderr


@pytest.mark.parametrize("mode, fault", [("unhandled-div", c.FAULT_EXCEPTION),
                                         ("unhandled-signal", c.FAULT_SIGNAL)])
def test_native_unhandled_fault_ends_the_program_and_twzd_carries_on(twzrun, faults_exe, mode,
                                                                     fault):
    r = twzrun(faults_exe, mode)
    assert r.returncode == c.TWZ_FAULT_EXIT_BASE + fault
    assert f"twz: unhandled {c.FAULT_NAMES[fault]} at 0x" in r.stderr
    assert "(object " in r.stderr and ", slot 0x" in r.stderr
    assert twzrun("print('still here')").stdout == "still here\n"


PY_EXCEPTIONS = """
    import ctypes, mmap
    import libtwz
    from libtwz import runtime as rt
    code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(code))
    for name, insns in [("ud2", b"\\x0f\\x0b"), ("int3", b"\\xcc\\xc3"),
                        # mov rax, rdi; cqo; xor ecx, ecx; idiv rcx; ret
                        ("div", b"\\x48\\x89\\xf8\\x48\\x99\\x31\\xc9\\x48\\xf7\\xf9\\xc3")]:
        code[:len(insns)] = insns
        try:
            rt.call(addr, 5)
        except libtwz.FaultException as e:
            print(name, *e.info, e.fault)
    code[:4] = b"\\x48\\x89\\xf8\\xc3"  # mov rax, rdi; ret
    print("ok", rt.call(addr, 7))
"""


def test_python_exceptions_from_machine_code(twzrun):
    r = twzrun(PY_EXCEPTIONS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"ud2 6 0 {c.FAULT_EXCEPTION}",
                                     f"int3 3 0 {c.FAULT_EXCEPTION}",
                                     f"div 0 0 {c.FAULT_EXCEPTION}", "ok 7"]


PY_THREADS = """
    import os, threading
    import libtwz
    from libtwz import fault, runtime as rt
    from twzlinux.abi import constants as c
    base = 0x10300 << 30  # a slot no view entry names
    raw = rt.buffer(base + 0x1000, 16)
    got = []
    def worker():
        try:
            while True:
                raw[0]  # a raw access: CPython's C code faults, the fault arrives here
        except libtwz.FaultObject as e:
            got.append((threading.get_native_id(), e.tid, e.flags))
    t = threading.Thread(target=worker)
    t.start(); t.join()
    me, tid, flags = got[0]
    print("worker", me == tid, me != threading.get_native_id(), flags)
    # a guarded access in a thread: the handler runs there and fixes the cause, then retried
    where = []
    def map_it(e):
        where.append(threading.get_native_id())
        obj = libtwz.Object.create()
        rt.lib.twz_rt_view_set(e.slot, obj.id.lo, obj.id.hi, c.VE_READ | c.VE_WRITE)
    fault.set_handler(c.FAULT_OBJECT, map_it)
    def guarded():
        rt.write(base + 0x2000, b"fixed")
        print("guarded", rt.read(base + 0x2000, 5).decode(), where == [threading.get_native_id()])
    t = threading.Thread(target=guarded)
    t.start(); t.join()
    # a raw null access in the main thread with a handler: handled, nothing raised
    seen = []
    fault.set_handler(c.FAULT_NULL, lambda e: seen.append(e.addr))
    rt.buffer(base + 0x10, 8)[0]
    for _ in range(3): pass
    print("null", seen == [base + 0x10])
    # FAULT_SIGNAL to our own thread, handled
    sig = []
    fault.set_handler(c.FAULT_SIGNAL, lambda e: sig.append(e.info))
    libtwz.sys.sys_signal(int(libtwz.ObjID.parse(os.environ["TWZ_THREAD"])), 1, 2, -3, 4)
    while not sig: pass
    print("signal", *sig[0])
    # unhandled in a worker thread: the program ends
    fault.set_handler(c.FAULT_NULL, None)
    def dies():
        rt.read(base + 0x18, 8)
    threading.Thread(target=dies).start()
    threading.Event().wait(10)
    print("not reached")
"""


def test_python_faults_arrive_in_the_faulting_thread_and_handlers_run(twzrun):
    r = twzrun(PY_THREADS)
    assert r.stdout.splitlines() == [
        f"worker True True {c.FAULT_OBJECT_READ | c.FAULT_OBJECT_NOMAP}",
        "guarded fixed True", "null True", "signal 1 2 -3 4"], r.stderr
    assert r.returncode == c.TWZ_FAULT_EXIT_BASE + c.FAULT_NULL, r.stderr
    assert f"twz: unhandled FAULT_NULL at {(0x10300 << 30) + 0x18:#x} " in r.stderr
    assert "slot 0x10300" in r.stderr


PAGE_AND_PPTR = """
    import sys
    import libtwz
    from libtwz import fault
    from twzlinux.abi import constants as c
    obj = libtwz.Object.create(persist=True)
    obj.write(0x20000, b"x")
    print(obj.id, flush=True)
    sys.stdin.readline()  # the test truncates the object's file under the store meanwhile
    try:
        obj.read(0x20000, 1)
    except libtwz.FaultPage as e:
        print("page", e.info[0] == 0x20000 // 4096, e.objid == int(obj.id))
    obj = libtwz.Object.create()  # the truncated one has lost its metainfo, at the end
    obj.write(0x1100, (5 << 30 | 8).to_bytes(8, "little"))  # FOT entry 5: there is none
    try:
        obj.load_ptr(0x1100)
    except libtwz.FaultPptr as e:
        print("pptr", e.flags == c.FAULT_PPTR_INVALID)
    calls = []
    def give_up(e):
        calls.append(e)
        raise KeyError("no such target")
    fault.set_handler(c.FAULT_PPTR, give_up)
    try:
        obj.load_ptr(0x1100)
    except KeyError:
        print("handler", len(calls))
"""


def test_python_fault_page_and_pptr(daemon, tmp_path):
    prog = tmp_path / "page.py"
    prog.write_text(textwrap.dedent(PAGE_AND_PPTR))
    proc = subprocess.Popen([sys.executable, "-m", "twzlinux.cli.twzrun", str(prog)],
                            env=twz_env(daemon), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        oid = proc.stdout.readline().strip()
        # the object's file cannot back the page any more (as on a store out of space)
        os.truncate(daemon / "objects" / oid, 0x2000)
        out, err = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["page True True", "pptr True", "handler 1"]


def test_signal_between_processes(daemon, tmp_path):
    receiver = tmp_path / "receiver.py"
    receiver.write_text(textwrap.dedent("""
        import os, sys
        from libtwz import fault
        from twzlinux.abi import constants as c
        got = []
        fault.set_handler(c.FAULT_SIGNAL, lambda e: got.append(e.info))
        print(os.environ["TWZ_THREAD"], flush=True)
        while not got:
            pass
        print("got", *got[0], flush=True)
    """))
    sender = tmp_path / "sender.py"
    sender.write_text(textwrap.dedent("""
        import sys
        import libtwz
        print(libtwz.sys.sys_signal(int(libtwz.ObjID.parse(sys.argv[1])), 7, 8, 9, -10))
        try:
            libtwz.sys.sys_signal(0x1234, 0, 0, 0, 0)
        except libtwz.TwzError as e:
            print(e.errno == 2)
    """))
    run = [sys.executable, "-m", "twzlinux.cli.twzrun"]
    recv = subprocess.Popen([*run, str(receiver)], env=twz_env(daemon), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        thread = recv.stdout.readline().strip()
        sent = subprocess.run([*run, str(sender), thread], env=twz_env(daemon),
                              capture_output=True, text=True, timeout=30)
        assert sent.stdout.splitlines() == ["0", "True"], sent.stderr
        out, err = recv.communicate(timeout=30)
    finally:
        recv.kill()
    assert (recv.returncode, out) == (0, "got 7 8 9 -10\n"), err


def test_signal_to_a_thread_spawned_into_another_view(twzrun):
    r = twzrun("""
        import errno, time
        import libtwz
        from libtwz import fault
        from twzlinux.abi import constants as c
        got = []
        fault.set_handler(c.FAULT_SIGNAL, lambda e: got.append(e.info))  # the host inherits it
        def wait_for_signal():
            while not got:
                time.sleep(0.001)
            return sum(got[0])
        t = libtwz.Thread(wait_for_signal, view=libtwz.View.clone())
        t.start()
        for _ in range(2000):
            try:
                libtwz.sys.sys_signal(int(t.id), 1, 2, 3, 4)
                break
            except libtwz.TwzError as e:  # ENOENT until its host process has registered
                assert e.errno == errno.ENOENT, e
                time.sleep(0.005)
        print("joined", t.join(timeout=30))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["joined 10"]
