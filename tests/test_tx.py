"""libtwz.tx (undo-log transactions after twz/tx.h) and libtwz.persist, in real programs."""

PROLOGUE = """
import libtwz
from libtwz import persist
from libtwz.tx import Abort, Tx, TxError
obj = libtwz.Object.create(persist=True)
tx = Tx.create(obj, 0x1000, 256)
D = 0x2000
obj.write(D, b"original")
"""


def check(twzrun, body):
    r = twzrun(PROLOGUE + body)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_commit_keeps_and_abort_restores(twzrun):
    out = check(twzrun, """
with tx:
    tx.write(D, b"first   ")
print(obj.read(D, 8))
with tx:
    tx.write(D, b"second  ")
    tx.write(D + 2, b"XX")
    raise Abort
print(obj.read(D, 8))
try:
    with tx:
        tx.write(D, b"third   ")
        raise KeyError("boom")
except KeyError:
    print("raised", obj.read(D, 8))
print(obj.read(0x1000 + 64, 4))
""")
    assert out.split("\n")[:4] == ["b'first   '", "b'first   '", "raised b'first   '",
                                   "b'\\x00\\x00\\x00\\x00'"]


def test_a_pending_log_is_rolled_back_on_open(twzrun):
    out = check(twzrun, """
tx.write(D, b"halfway!")        # recorded and written, never committed: a crash here
print(obj.read(D, 8))
again = Tx(obj, 0x1000)          # the next open (TXCHECK)
print(obj.read(D, 8), again.check())
""")
    assert out.splitlines() == ["b'halfway!'", "b'original' False"]


def test_a_full_log_rolls_back_and_says_so(twzrun):
    out = check(twzrun, """
try:
    with tx:
        for i in range(100):
            tx.write(D + 8 * i, b"overflow")
except TxError as e:
    print("TxError", "rolled back" in str(e), obj.read(D, 8))
""")
    assert out.strip() == "TxError True b'original'"


def test_flush_and_fence_on_persistent_and_volatile_objects(twzrun):
    out = check(twzrun, """
vol = libtwz.Object.create()
for o in (obj, vol):
    o.write(0x5123, b"x" * 9000)
    persist.flush(o, 0x5123, 9000)
persist.fence()
print("ok")
""")
    assert out.strip() == "ok"
