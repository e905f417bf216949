"""The personality's slot map: where Twizzler's 1 GiB slots live in a Linux process.

Twizzler owns the whole 47-bit address space (slots 0..0x1ffff). On Linux, slot 0 is refused by
`mmap_min_addr`, PIE executables and the brk heap sit near 0x5555_5555_0000 (slot ~0x15555), and
libraries, thread stacks and the stack fill the top. So a Twizzler process reserves one window
of slots with a single PROT_NONE mapping at start-up and maps objects over it with MAP_FIXED.
A slot number is still a real address: slot s is at s << 30, so Twizzler's d-ptr arithmetic
(`slot << 30 | offset`) holds unchanged. View entries are indexed by that same slot number.

Twizzler's named slots move into the head of the window (docs/slots.md has the table):

    Twizzler slot            Twizzler   personality
    TWZSLOT_CVIEW (view)     0x1fff0    WINDOW_START + 0
    TWZSLOT_THRD (repr)      0x10000    WINDOW_START + 1
    TWZSLOT_STACK            0x10001    (none: the Linux stack serves)
    TWZSLOT_ALLOC_START..MAX 0x10010..  WINDOW_START + 0x10 .. WINDOW_END - 1

Executables are Linux ELF files loaded by Linux, so Twizzler's slot-0 text / slot-1 data
convention and FOT-index-as-slot do not apply.
"""

from .constants import OBJ_MAXSIZE

WINDOW_START = 0x400            # 1 TiB
WINDOW_SLOTS = 0x10000          # 64 Ki slots: 1 TiB .. 65 TiB, below PIE load addresses
WINDOW_END = WINDOW_START + WINDOW_SLOTS

SLOT_CVIEW = WINDOW_START + 0
SLOT_THRD = WINDOW_START + 1
SLOT_ALLOC_START = WINDOW_START + 0x10
SLOT_ALLOC_MAX = WINDOW_END - 1

# Twizzler's own numbers, for documentation and for decoding foreign views.
TWZSLOT_THRD = 0x10000
TWZSLOT_STACK = 0x10001
TWZSLOT_ALLOC_START = 0x10010
TWZSLOT_ALLOC_MAX = 0x19FFF
TWZSLOT_CVIEW = 0x1FFF0
TWZSLOT_MAX_SLOT = 0x1FFFF


def slot_address(slot: int) -> int:
    return slot * OBJ_MAXSIZE


def address_slot(addr: int) -> int:
    return addr // OBJ_MAXSIZE


def in_window(slot: int) -> bool:
    return WINDOW_START <= slot < WINDOW_END
