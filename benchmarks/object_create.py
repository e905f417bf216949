"""Object create + map + first touch + delete, run under twzrun; prints {"median_us": ...}.

One iteration: libtwz.Object.create(), write one byte of the first data page through
obj.view(), obj.delete(), and obj.release() (gives back the slot, like the floor's munmap).

usage: twzrun benchmarks/object_create.py [N]
"""

import sys

import libtwz

from timing import report  # benchmarks/timing.py

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def once():
    obj = libtwz.Object.create()
    obj.view()[0x1000] = 1
    obj.delete()
    obj.release()


report(once, n)
