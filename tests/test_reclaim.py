"""Volatile objects and their memfds are reclaimed once nothing references them: twzd's fd
count stays flat over thousands of create/delete cycles, within one program and across many."""

import os

from conftest import daemon_pid

CYCLES = """
import sys, libtwz
for i in range(int(sys.argv[1])):
    o = libtwz.Object.create(tied=False)   # untied: only the mapping references it
    o.view()[0x1000] = 1                   # mapped (LX_OBJFD) on first touch
    o.delete()
    o.release()                            # unmapped: now nothing references it
print("done")
"""


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_no_fd_leak_over_thousands_of_create_delete_cycles(daemon, twzrun):
    pid = daemon_pid(daemon)
    assert twzrun(CYCLES, 10).returncode == 0
    before = fds(pid)
    for _ in range(3):
        r = twzrun(CYCLES, 1500)
        assert r.returncode == 0, r.stderr
    assert fds(pid) <= before + 2


def test_a_long_running_program_does_not_pile_up_memfds(daemon, twzrun):
    pid = daemon_pid(daemon)
    probe = CYCLES.replace('print("done")', """
import os
twzd = int(sys.argv[2])
print(len(os.listdir(f"/proc/{twzd}/fd")))
""")
    small = twzrun(probe, 300, pid)
    big = twzrun(probe, 3000, pid)
    assert small.returncode == 0 and big.returncode == 0, small.stderr + big.stderr
    # 2700 more cycles leave at most one prune period (256) more objects held
    assert int(big.stdout) - int(small.stdout) < 300, (small.stdout, big.stdout)


SPAWN_C = r"""
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>
#include <stdio.h>
#include <stdlib.h>
static void work(void *arg) { (void)arg; }
int main(int argc, char **argv)
{
	for(int i = 0; i < atoi(argv[1]); i++) {
		struct twz_thread t;
		if(twz_thread_spawn(&t, 0, work, NULL) < 0 || twz_thread_join(&t) != 0)
			return 2;
	}
	return 0;
}
"""

SPAWN_PY = """
import os, sys, libtwz
n, twzd = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    t = libtwz.Thread(lambda: 7)
    t.start()
    assert t.join() == 7 and t.join() == 7      # joining again gives the code again
print(len(os.listdir(f"/proc/{twzd}/fd")))
"""


def test_joined_threads_leave_no_repr_behind(daemon, twzrun, build_native):
    # A thread's repr is an object (a memfd in twzd): once joined, nothing holds it, from C
    # (it outlived the program before) or from Python (it stayed until the program exited).
    pid = daemon_pid(daemon)
    exe = build_native(SPAWN_C, "spawn", ["-pthread"])
    assert twzrun(str(exe), 5).returncode == 0
    before = fds(pid)
    r = twzrun(str(exe), 300)
    assert r.returncode == 0, r.stderr
    assert fds(pid) <= before + 2
    small, big = twzrun(SPAWN_PY, 20, pid), twzrun(SPAWN_PY, 300, pid)
    assert small.returncode == 0 and big.returncode == 0, small.stderr + big.stderr
    assert int(big.stdout) - int(small.stdout) < 50, (small.stdout, big.stdout)
