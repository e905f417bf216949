"""cffi (API mode) builds, run by setup.py at install: the runtime as `twzlinux._twzrt`, and
twzd's seccomp notification calls (notif.c) as `twzlinux._twznotif`.

API mode compiles the runtime together with its Python binding, so rt.h can call the Python C API
(PyErr_SetInterruptEx) and the static inline `twz_syscall6` of sys.h becomes a direct function.
`python twzlinux/native/build.py` builds both in place for development.
"""

import pathlib

from cffi import FFI

INCLUDE_DIR = pathlib.Path(__file__).resolve().parent / "include"

CDEF = """
struct twz_fault_record {
    int fault;
    uint32_t flags;
    uint64_t addr, ip, slot, objid_lo, objid_hi;
    uint64_t data[4];
    long tid;
};

long twz_syscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6);

int twz_rt_reserve_window(void);
int twz_rt_init(uint64_t view_lo, uint64_t view_hi);
int twz_rt_init_fd(int fd, uint64_t view_lo, uint64_t view_hi);
int twz_rt_copy(void *dst, const void *src, size_t n, struct twz_fault_record *f);
int twz_rt_call(long (*fn)(long), long arg, long *ret, struct twz_fault_record *f);
void twz_rt_set_fault_signal(int signum);
int twz_rt_take_pending(struct twz_fault_record *f);

long twz_rt_slot_alloc(uint64_t lo, uint64_t hi, uint32_t flags);
void twz_rt_slot_release(long slot);
int twz_rt_view_set(long slot, uint64_t lo, uint64_t hi, uint32_t flags);
int twz_rt_view_get(long slot, uint64_t *lo, uint64_t *hi, uint32_t *flags);

uint64_t twz_rt_load64(const uint64_t *p);
void twz_rt_store64(uint64_t *p, uint64_t v);
uint64_t twz_rt_cas64(uint64_t *p, uint64_t expected, uint64_t desired);
uint64_t twz_rt_fetch_add64(uint64_t *p, uint64_t v);
uint64_t twz_rt_fetch_or64(uint64_t *p, uint64_t v);
uint64_t twz_rt_fetch_and64(uint64_t *p, uint64_t v);

struct sys_thread_sync_args { uint64_t *addr; uint64_t arg; uint64_t res; uint64_t __resv;
                              uint32_t op; uint32_t flags; };
struct timespec { long tv_sec; long tv_nsec; ...; };
long twz_thread_sync_multiple(size_t count, struct sys_thread_sync_args *args,
                              const struct timespec *timeout);
long twz_thread_sync(int op, uint64_t *addr, uint64_t val, const struct timespec *timeout);
long twz_sync_sleep64(uintptr_t addr, uint64_t expected, int64_t timeout_ns);
long twz_sync_wake(uintptr_t addr, long count);
void *twz_thread_repr_base(void);
int twz_thread_set_repr_slot(long slot);
long twz_thread_exited(uint64_t code);
int twz_thread_adopt_env(void);
int twz_rt_enter_view(uint64_t view_lo, uint64_t view_hi);
void twz_rt_fork_hosts(int on);
char *getenv(const char *name);  /* TWZ_VIEW after a fork: the runtime sets the C environment */
uint64_t twz_reset_code(void);
struct mutex { uint64_t sleep; uint64_t resetcode; };
void mutex_init(struct mutex *m);
void mutex_acquire(struct mutex *m);
int mutex_try_acquire(struct mutex *m);
void mutex_release(struct mutex *m);
struct evhdr { uint64_t point; };
struct event { struct evhdr *hdr; uint64_t events; uint64_t result; uint64_t __resv[2];
               uint64_t flags; };
void event_init(struct event *ev, struct evhdr *hdr, uint64_t events);
int event_wait(size_t count, struct event *ev, const struct timespec *timeout);
int event_wake(struct evhdr *hdr, uint64_t events, long wcount);
uint64_t event_clear(struct evhdr *hdr, uint64_t events);
uint64_t event_poll(struct evhdr *hdr, uint64_t events);
"""

# The one translation unit that holds the runtime's implementation in the extension.
SOURCE = """
#define TWZ_RT_IMPLEMENTATION
#define TWZ_RT_PYTHON
#include <twz/rt.h>
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("twzlinux._twzrt", SOURCE, include_dirs=[str(INCLUDE_DIR)],
                      depends=[str(p) for p in sorted(INCLUDE_DIR.rglob("*.h"))],
                      # PyErr_SetInterruptEx (3.10) is hidden by the limited API cffi defaults to.
                      define_macros=[("_CFFI_NO_LIMITED_API", None)], py_limited_api=False,
                      extra_compile_args=["-std=gnu11", "-Wall", "-Werror=implicit-function-declaration"])

NOTIF_C = INCLUDE_DIR.parent / "notif.c"
notif_builder = FFI()
notif_builder.cdef("""
#define TWZ_NOTIF_NONE 0
#define TWZ_NOTIF_READY 1
#define TWZ_NOTIF_HUP 2
int twz_notif_set_sync_wakeup(int fd);
int twz_notif_recv(int fd, uint64_t out[9]);
int twz_notif_send(int fd, uint64_t id, uint64_t value);
int twz_notif_id_valid(int fd, uint64_t id);
int twz_notif_addfd_send(int fd, uint64_t id, int srcfd);
""")
notif_builder.set_source("twzlinux._twznotif", NOTIF_C.read_text(), depends=[str(NOTIF_C)],
                         extra_compile_args=["-std=gnu11", "-Wall",
                                             "-Werror=implicit-function-declaration"])

if __name__ == "__main__":
    for builder in (ffibuilder, notif_builder):
        builder.compile(tmpdir=str(INCLUDE_DIR.parent.parent.parent), verbose=True)
