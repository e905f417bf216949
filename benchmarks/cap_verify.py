"""Capability verification by the kernel core's Verifier; prints {"median_us": ...}.

cold: every evaluation misses the verification cache (a fresh capability each time is too
costly to sign, so the cache is emptied instead); cached: the same capability again, as twzd
sees it on every map after the first. The floor (scripts/bench) is one raw ECDSA P-256 verify
of the same library.

usage: [twzrun] benchmarks/cap_verify.py cold|cached [N]
"""

import sys
import time

from twzlinux.kernel import security as sec

from timing import report  # benchmarks/timing.py

mode = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
key = sec.ec.generate_private_key(sec.ec.SECP256R1())
TARGET, ACCESSOR, KUID = 0x1234 << 64 | 1, 0x5678 << 64 | 2, 0x9ABC << 64 | 3
cap = sec.make_cap(key, TARGET, ACCESSOR, sec.SCP_READ)
v = sec.Verifier(lambda oid: KUID, lambda kuid: key.public_key(), time.time_ns)


def once():
    if mode == "cold":
        v._verified.clear()
    perms = v.evaluate(cap, TARGET, ACCESSOR)[0]
    assert perms == sec.SCP_READ


report(once, n)
