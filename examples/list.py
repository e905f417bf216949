"""A persistent linked list whose nodes live in several objects, joined by persistent pointers.

Run it with `twzrun examples/list.py [WORD ...]`. The first run creates the list under the name
/examples/list; every run adds a new persistent object holding this run's nodes, links them
after the last node (a pointer from one object into another, through the FOT), and prints the
whole list. Stop twzd, run it again: the list is found by name and grows.

The list head lives in the root area of the named object (the first data page):

    0x1000  u64 magic      0x1000+16  u64 head (p-ptr)     0x1000+32  u64 runs
    0x1000+8 u64 count     0x1000+24  u64 tail (p-ptr)

A node, allocated inside its run's object:  next (p-ptr) | run (u64) | text (48 bytes)
"""

import errno
import struct
import sys

import libtwz

NAME = "/examples/list"
ROOT = 0x1000
MAGIC = 0x7473696C7A7774  # "twzlist"
NODE = struct.Struct("<QQ48s")
U64 = struct.Struct("<Q")


def open_list():
    try:
        head = libtwz.Object.open(NAME, write=True)
    except libtwz.TwzError as e:
        if e.errno != errno.ENOENT:  # anything but "no such name" is a real problem
            raise
        head = libtwz.Object.create(persist=True, name=NAME)
        head.write(ROOT, struct.pack("<QQQQQ", MAGIC, 0, 0, 0, 0))
        print(f"created {NAME} as object {head.id}")
    magic = U64.unpack(head.read(ROOT, 8))[0]
    if magic != MAGIC:
        sys.exit(f"{NAME} (object {head.id}) is not a list made by this example")
    return head


def append(head, words):
    count, _, _, runs = struct.unpack("<QQQQ", head.read(ROOT + 8, 32))
    runs += 1
    block = libtwz.Object.create(persist=True, tied=False)
    tail = head.load_ptr(ROOT + 24)
    for word in words:
        off = block.alloc(NODE.size)
        block.write(off, NODE.pack(0, runs, word.encode()[:48]))
        if tail is None:
            head.store_ptr(ROOT + 16, block, off, write=True)
        else:
            tail_obj, tail_off = tail
            tail_obj.store_ptr(tail_off, block, off, write=True)
        head.store_ptr(ROOT + 24, block, off, write=True)  # the tail is written through
        tail = (block, off)
        count += 1
    head.write(ROOT + 8, U64.pack(count))
    head.write(ROOT + 32, U64.pack(runs))
    return runs


def show(head):
    count = U64.unpack(head.read(ROOT + 8, 8))[0]
    node = head.load_ptr(ROOT + 16)
    objects = set()
    print(f"{NAME}: {count} nodes")
    i = 0
    while node is not None:
        obj, off = node
        _, run, text = NODE.unpack(obj.read(off, NODE.size))
        text = text.rstrip(b"\0").decode()
        objects.add(obj.id)
        print(f"  [{i}] run {run}: {text}  (object {obj.id} "
              f"+{off:#x}, mapped at {obj.address + off:#x})")
        node = obj.load_ptr(off)
        i += 1
    print(f"{i} nodes in {len(objects)} objects")


def main():
    head = open_list()
    words = sys.argv[1:] or ["hello", "twizzler"]
    run = append(head, words)
    print(f"run {run} added {len(words)} nodes")
    show(head)


if __name__ == "__main__":
    main()
