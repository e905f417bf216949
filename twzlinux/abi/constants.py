"""Twizzler's numbers, exactly as Twizzler defines them (reference/twizzler.md §1-§3).

Everything here is a plain constant so that the daemon, libtwz, the C header generator and the
tracer all read one definition. Where the personality adds a number of its own, the comment
says so.
"""

import errno as _errno

# --- objects (§2.1) -------------------------------------------------------------------------
OBJ_MAXSIZE = 1 << 30
OBJ_NULLPAGE_SIZE = 0x1000
OBJ_METAPAGE_SIZE = 0x800
OBJ_METAINFO_OFFSET = OBJ_MAXSIZE - OBJ_METAPAGE_SIZE  # 0x3FFFF800
OBJ_FOTE_SIZE = 32
OBJ_MAXFOTE = (1 << 20) - 0x1000 // 32
OBJ_TOPDATA = OBJ_MAXSIZE - (0x1000 + OBJ_MAXFOTE * 32)  # 0x3E000000
PAGE_SIZE = 0x1000
MI_MAGIC = 0x54575A4F
METAINFO_LEN_DEFAULT = 64 + 128  # milen: metainfo plus eight metaext slots

# metainfo.flags
MIF_SZ = 0x1

# metainfo.p_flags: default permissions of anyone who knows the ID
MIP_HASHDATA = 0x1
MIP_DFL_READ = 0x4
MIP_DFL_WRITE = 0x8
MIP_DFL_EXEC = 0x10
MIP_DFL_USE = 0x20
MIP_DFL_DEL = 0x40
MIP_PFLAGS_MASK = MIP_HASHDATA | MIP_DFL_READ | MIP_DFL_WRITE | MIP_DFL_EXEC | MIP_DFL_USE

# metaext tags (§2.3)
TWZIO_METAEXT_TAG = 0x10101010
EVENT_METAEXT_TAG = 0x1122EE00EEEE
BSTREAM_METAEXT_TAG = 0xBBBBBBBB
ALLOC_METAINFO_TAG = 0xAAAAAAAA11223344

# FOT entry flags (§2.4)
FE_READ = 0x4
FE_WRITE = 0x8
FE_EXEC = 0x10
FE_USE = 0x20
FE_NAME = 0x1000
FE_DERIVE = 0x2000
FE_ALLOC_ = 0x10000
FE_VALID_ = 0x20000

# --- OCREATE / ODELETE / OTIE / KCONF / OCTL / OSTAT flags (§1.3, §1.4, §1.6) -------------
TWZ_SYS_OC_ZERONONCE = 0x1000
TWZ_SYS_OC_VOLATILE = 0x2000
TWZ_SYS_OC_PERSIST_ = 0x4000
OC_KSO_SHIFT = 8
OC_KSO_MASK = 0xF << OC_KSO_SHIFT
OC_VALID_FLAGS = (MIP_PFLAGS_MASK | MIP_DFL_DEL | TWZ_SYS_OC_ZERONONCE | TWZ_SYS_OC_VOLATILE
                  | TWZ_SYS_OC_PERSIST_ | OC_KSO_MASK)

TWZ_SYS_OD_IMMEDIATE = 1
OTIE_UNTIE = 1

KCONF_RDRESET = 1
KCONF_ARCH_TSC_PSPERIOD = 1001

OCO_CACHE_MODE = 0
OCO_MAP = 1
OC_CM_WB, OC_CM_UC, OC_CM_WT, OC_CM_WC = 0, 1, 2, 3
OC_MAP_IO = 1

OS_TYPE_OBJ = 0
OS_TYPE_PAGE = 1
OS_FLAGS_PIN = 1
OS_FLAGS_KERNEL = 2
OS_FLAGS_PERSIST = 4
OS_FLAGS_HIDDEN = 8
OS_FLAGS_ALLOC = 0x10
OS_FLAGS_PAGER = 0x20
OS_FLAGS_SOURCED = 0x40
OS_PAGE_EXIST = 1
OS_PAGE_COW = 2
OS_PAGE_MAPPED = 4

# --- INVL_KSO (§1.3) -----------------------------------------------------------------------
KSOI_VALID = 1
KSOI_CURRENT = 2
KSO_CURRENT_VIEW = 0
KSO_CURRENT_ACTIVE_SECCTX = 1
KSO_CURRENT_ATTACHED_SECCTXS = 2
KSO_INVL_RES_OK = 0
KSO_INVL_RES_ERR = 0xFFFF  # -1 stored in a u16
INVL_MAX_OPS = 1024  # personality bound: Twizzler leaves it to the user pointer check

# --- THRD_SYNC / THRD_CTL (§1.3) ------------------------------------------------------------
THREAD_SYNC_SLEEP = 0
THREAD_SYNC_WAKE = 1
THREAD_SYNC_32BIT = 2
MAX_SLEEPS = 1024
THRD_CTL_SET_FS = 1
THRD_CTL_SET_GS = 2
THRD_CTL_SET_IOPL = 3
THRD_CTL_EXIT = 0x100
THRD_SYNCPOINTS = 128
# personality: the exit code a thread reports when its process died before the thread exited
THRD_EXIT_LOST = (1 << 64) - 1

DEBUG_PRINT_MAX = 1024

# --- KSOs (§3.1) ---------------------------------------------------------------------------
KSO_NONE, KSO_VIEW, KSO_SECCTX, KSO_THREAD, KSO_ROOT, KSO_DEVBUS, KSO_DEVICE, KSO_MAX = range(8)
KSO_NAMES = ("NONE", "VIEW", "SECCTX", "THREAD", "ROOT", "DEVBUS", "DEVICE")
KSO_NAME_MAXLEN = 1024
KSO_ROOT_ID = 1

# --- views (§3.3) --------------------------------------------------------------------------
VE_READ = 0x4
VE_WRITE = 0x8
VE_EXEC = 0x10
VE_VALID = 0x1000
VE_FIXED = 0x2000
VIEW_NSLOTS = 0x20000

# --- faults (§3.5) -------------------------------------------------------------------------
FAULT_OBJECT = 0
FAULT_NULL = 1
FAULT_EXCEPTION = 2
FAULT_SCTX = 3
FAULT_FAULT = 4
FAULT_PAGE = 5
FAULT_PPTR = 6
FAULT_SIGNAL = 7
NUM_FAULTS = 8
FAULT_NAMES = ("FAULT_OBJECT", "FAULT_NULL", "FAULT_EXCEPTION", "FAULT_SCTX", "FAULT_FAULT",
               "FAULT_PAGE", "FAULT_PPTR", "FAULT_SIGNAL")

FAULT_OBJECT_READ = 1
FAULT_OBJECT_WRITE = 2
FAULT_OBJECT_EXEC = 4
FAULT_OBJECT_NOMAP = 8
FAULT_OBJECT_EXIST = 16
FAULT_OBJECT_INVALID = 32
FAULT_OBJECT_UNKNOWN = 64
FAULT_OBJECT_UNSIZED = 128

FAULT_PPTR_UNKNOWN = 0
FAULT_PPTR_INVALID = 1
FAULT_PPTR_RESOLVE = 2
FAULT_PPTR_RESOURCES = 3
FAULT_PPTR_DERIVE = 4

# personality: the real-time signal twzd queues (rt_tgsigqueueinfo, SI_QUEUE) to deliver a
# FAULT_SIGNAL, its four longs in the siginfo's 32 bytes of fields; SIGRTMIN (34) + 7
TWZ_SIGNAL_SIGNUM = 41

# --- namespaces (§4.8) ---------------------------------------------------------------------
NAMESPACE_MAGIC = 0xA13A1300BBBBCCCC
NAME_ENT_VALID = 1
NAME_ENT_REGULAR = 0
NAME_ENT_NAMESPACE = 1
NAME_ENT_SYMLINK = 2
NAME_MAX_DEPTH = 32

# --- errors (§1.1): Linux errno values plus Twizzler's own ----------------------------------
EGENERIC = 1000
EINVLOBJ = 1001
ENOFOT = 1002
TWZ_ERRNO_NAMES = {EGENERIC: "EGENERIC", EINVLOBJ: "EINVLOBJ", ENOFOT: "ENOFOT"}


def errno_name(code: int) -> str:
    """Symbolic name of a (positive) errno, Twizzler's extras included."""
    return TWZ_ERRNO_NAMES.get(code) or _errno.errorcode.get(code, f"E{code}")


# --- personality: exit status of a native program killed by an unhandled fault -------------
# Twizzler exits a thread with 256 + fault (EXIT_CODE_FAULT), which a Linux exit status (8 bits)
# cannot hold; the native runtime exits with TWZ_FAULT_EXIT_BASE + fault instead (112..119),
# clear of 126/127 (shell exec failures) and 128+signo (signal deaths).
TWZ_FAULT_EXIT_BASE = 112

# --- personality: size of the data region, measured from the object base (slot offset 0x1000)
OBJ_DATA_SIZE = OBJ_TOPDATA - OBJ_NULLPAGE_SIZE

# Gates (us/include/twz/gate.h) and the personality's LX_GATE ops (twzlinux/kernel/gates.py)
TWZ_GATE_OFFSET = 0x1200
TWZ_GATE_SIZE = 32
LX_GATE_SERVE, LX_GATE_WAIT, LX_GATE_RETURN, LX_GATE_CALL = 1, 2, 3, 4
