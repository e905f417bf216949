/* twz/rt.h - the Twizzler runtime of a Linux process, header-only.
 *
 * On Twizzler the kernel maps an object into a slot when the program first touches it, and turns
 * refused accesses into faults delivered to the program. On Linux the process does both for
 * itself: it reserves a window of 1 GiB slots (twzlinux/abi/slots.py) with one PROT_NONE mapping,
 * and its SIGSEGV handler reads the view entry of the faulting slot, asks twzd for a file
 * descriptor of the object (LX_OBJFD) and maps it MAP_FIXED over the reservation. Accesses that
 * cannot be satisfied become Twizzler faults (reference/twizzler.md §3.5).
 *
 * One source serves two consumers:
 *   - native programs: `#define TWZ_RT_IMPLEMENTATION` in exactly one .c file, before including
 *     anything (the runtime needs _GNU_SOURCE for REG_ERR and MAP_FIXED_NOREPLACE). A constructor
 *     then runs twz_rt_init from $TWZ_VIEW ("hi:lo", Twizzler's IDFMT) when twzd set it.
 *   - the Python extension twzlinux._twzrt (twzlinux/native/build.py), which also defines
 *     TWZ_RT_PYTHON: no constructor (libtwz calls twz_rt_init), and faults taken by raw accesses
 *     from CPython are queued and signalled instead of killing the process.
 *
 * A fault is delivered, in order of preference:
 *   1. to a guarded call on the faulting thread (twz_rt_copy, twz_rt_call): it returns -1 with
 *      the record;
 *   2. (Python only, once twz_rt_set_fault_signal was called) by completing the access on a
 *      private scratch page, queueing the record for twz_rt_take_pending and signalling the
 *      main thread, where the Python signal handler runs;
 *   3. (native only) to the view's fault handler, as Twizzler's kernel calls it (twz/fault.h);
 *   4. otherwise by printing one line to stderr and exiting with TWZ_FAULT_EXIT_BASE + fault.
 * Memory faults outside the window go to whatever handler was installed before (or kill the
 * process as usual); SIGFPE, SIGILL and SIGTRAP are FAULT_EXCEPTION anywhere.
 *
 * Threads: the slot state, the pending queue and the view lock are safe to use from any thread.
 * twz_rt_init and twz_rt_reserve_window should run before the process starts threads (only the
 * calling thread gets an alternate signal stack).
 */
#ifndef TWZ_RT_H
#define TWZ_RT_H

#if defined(TWZ_RT_IMPLEMENTATION) && !defined(_GNU_SOURCE)
#if defined(_FEATURES_H)
#error "twz/rt.h: define _GNU_SOURCE, or include twz/rt.h first in the TWZ_RT_IMPLEMENTATION file"
#endif
#define _GNU_SOURCE
#endif

#include <stddef.h>
#include <stdint.h>

#include <twz/sys.h>

/* One Twizzler fault. `flags` always carries the access (FAULT_OBJECT_READ/WRITE/EXEC) and, for
 * FAULT_OBJECT, the reason (NOMAP, EXIST, UNKNOWN). The object is the one the view names for
 * the slot (0 if none). `data`: FAULT_EXCEPTION {x86 vector, error code or MXCSR},
 * FAULT_PAGE {page number in the object}, FAULT_SIGNAL {the four longs}. `tid`: the Linux
 * thread that took it (set for faults queued for Python). */
struct twz_fault_record {
	int fault;
	uint32_t flags;
	uint64_t addr, ip, slot, objid_lo, objid_hi;
	uint64_t data[4];
	long tid;
};

/* Reserve the slot window and take over SIGSEGV/SIGBUS for it. Idempotent; 0 or -errno. */
int twz_rt_reserve_window(void);
/* twz_rt_reserve_window, then map view object (hi:lo) at SLOT_CVIEW through LX_OBJFD. */
int twz_rt_init(uint64_t view_lo, uint64_t view_hi);
/* As twz_rt_init, for a view whose descriptor the caller already holds (and keeps). */
int twz_rt_init_fd(int fd, uint64_t view_lo, uint64_t view_hi);

/* Guarded copy: 0, or -1 with *f describing the fault (f may be NULL). */
int twz_rt_copy(void *dst, const void *src, size_t n, struct twz_fault_record *f);
/* Guarded call of fn(arg): 0 with *ret, or -1 with *f (twz/fault.h). */
int twz_rt_call(long (*fn)(long), long arg, long *ret, struct twz_fault_record *f);

/* Python: signal the main thread with `signum` for faults outside guarded calls. */
void twz_rt_set_fault_signal(int signum);
/* Pop the oldest queued fault into *f and put its slot back as it was before the scratch page
 * (the whole slot reserved again and remapped on the next touch). 1 if one was taken, else 0. */
int twz_rt_take_pending(struct twz_fault_record *f);

/* Twizzler's view slot allocator (twz_view_allocate_slot), over the view object's lock, bitmap
 * and (id, flags) buckets. The same (id, flags) gets the same slot, counted. */
long twz_rt_slot_alloc(uint64_t lo, uint64_t hi, uint32_t flags);
void twz_rt_slot_release(long slot);
/* Twizzler's twz_view_set / twz_view_get on the current view. 0 or -errno (-ENXIO: no view). */
int twz_rt_view_set(long slot, uint64_t lo, uint64_t hi, uint32_t flags);
int twz_rt_view_get(long slot, uint64_t *lo, uint64_t *hi, uint32_t *flags);

/* Sequentially consistent atomics on object words; cas64 returns the value it found. */
uint64_t twz_rt_load64(const uint64_t *p);
void twz_rt_store64(uint64_t *p, uint64_t v);
uint64_t twz_rt_cas64(uint64_t *p, uint64_t expected, uint64_t desired);
uint64_t twz_rt_fetch_add64(uint64_t *p, uint64_t v);
uint64_t twz_rt_fetch_or64(uint64_t *p, uint64_t v);
uint64_t twz_rt_fetch_and64(uint64_t *p, uint64_t v);

#include <twz/thread.h> /* threads, thread_sync, mutexes, events */

#include <twz/fault.h> /* fault-info structures, twz_fault_set, the view's fault handlers */
#include <twz/become.h> /* twz_rt_become: BECOME with the view switch */

#ifdef TWZ_RT_IMPLEMENTATION

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifdef TWZ_RT_PYTHON
#include <Python.h>
#endif

#define TWZ_RT_SLOT_SHIFT 30
#define TWZ_RT_WINDOW_BYTES ((uint64_t)WINDOW_SLOTS << TWZ_RT_SLOT_SHIFT)
#define TWZ_RT_RESERVE_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
#define TWZ_RT_ALTSTACK_SIZE (64 * 1024)
#define TWZ_RT_PENDING_MAX 16
#define TWZ_RT_LOCK_SPINS 128

/* x86 page-fault error code, which the kernel hands the handler in REG_ERR. */
#define TWZ_RT_PF_WRITE 0x2
#define TWZ_RT_PF_FETCH 0x10

#define TWZ_RT_USERFAULTFD_IOC_NEW _IO(0xAA, 0x00) /* linux/userfaultfd.h, 6.1+ */

/* Per-slot state: 0 while the slot is the bare reservation, MAPPING while one thread maps it
 * (it claimed the slot with a CAS; others wait), else MAPPED | the PROT_* bits. */
#define TWZ_RT_SLOT_MAPPED 0x80
#define TWZ_RT_SLOT_MAPPING 0x40

static struct {
	int reserved;
	int view_mapped;
	objid_t view_id;
	int fault_signal;
	int uffd_given; /* twzd holds a userfaultfd of this mm: it wants LX_MAPPED after each mmap */
	struct sigaction old_segv, old_bus, old_fpe, old_ill, old_trap, old_signal;
	uint8_t slot_state[WINDOW_SLOTS];
} twz_rt;

/* ---- slots --------------------------------------------------------------------------------- */

static inline char *twz_rt_slot_base(uint64_t slot)
{
	return (char *)(uintptr_t)(slot << TWZ_RT_SLOT_SHIFT);
}

static inline int twz_rt_in_window(uint64_t slot)
{
	return slot >= WINDOW_START && slot < WINDOW_END;
}

static inline uint8_t *twz_rt_state(uint64_t slot)
{
	return &twz_rt.slot_state[slot - WINDOW_START];
}

/* Put the bare reservation back over a whole slot, so the next touch maps it afresh. Never used
 * on the view slot: the handler reads the view through it. */
static void twz_rt_unmap_local(uint64_t slot)
{
	mmap(twz_rt_slot_base(slot), OBJ_MAXSIZE, PROT_NONE, TWZ_RT_RESERVE_FLAGS | MAP_FIXED, -1, 0);
	__atomic_store_n(twz_rt_state(slot), 0, __ATOMIC_RELEASE);
}

static int twz_rt_prot_of_fd(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	/* twzd opens the object read-only unless writing is granted: the host enforces it. */
	return (fl >= 0 && (fl & O_ACCMODE) == O_RDWR) ? PROT_READ | PROT_WRITE : PROT_READ;
}

/* Take the slot for mapping: 1 if this thread now holds it (state MAPPING), 0 if its state is no
 * longer `seen` (another thread mapped or unmapped it meanwhile: retry the access). */
static int twz_rt_claim(uint64_t slot, uint8_t seen)
{
	return __atomic_compare_exchange_n(twz_rt_state(slot), &seen, TWZ_RT_SLOT_MAPPING, 0,
	  __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* Map an object over a claimed slot, all but the null page (left reserved so that a null pointer
 * of any slot faults). Exec needs the entry's VE_EXEC (want_exec, W^X already applied): an fd's
 * access mode cannot say "executable", but twzd refuses LX_OBJFD for EXEC unless the caller's
 * security context grants it (defaults or a capability), so the fd in hand answers the question.
 *
 * When twzd holds a userfaultfd of this mm, the mapping stays PROT_NONE until twzd has trapped it
 * (LX_MAPPED): until then a lazy copy's unfilled pages would read as holes (and the holes would
 * stay, zero pages in the copy's image), and a write to a source would reach the copies that still
 * owe its pages. Threads that touch the slot meanwhile wait in the handler for MAPPING to end.
 * Safe in the signal handler: mmap, mprotect and fcntl are plain system calls. */
static int twz_rt_map_fd(uint64_t slot, int fd, int want_exec, objid_t id)
{
	char *base = twz_rt_slot_base(slot) + OBJ_NULLPAGE_SIZE;
	size_t len = OBJ_MAXSIZE - OBJ_NULLPAGE_SIZE;
	int prot = twz_rt_prot_of_fd(fd), first = twz_rt.uffd_given ? PROT_NONE : prot;
	if(mmap(base, len, first, MAP_SHARED | MAP_FIXED, fd, OBJ_NULLPAGE_SIZE) == MAP_FAILED)
		goto fail;
	if(twz_rt.uffd_given)
		sys_lx_mapped(base - OBJ_NULLPAGE_SIZE, id);
	if(want_exec && mprotect(base, len, prot | PROT_EXEC) == 0)
		prot |= PROT_EXEC;
	else if(first != prot && mprotect(base, len, prot) < 0)
		goto fail;
	__atomic_store_n(twz_rt_state(slot), TWZ_RT_SLOT_MAPPED | prot, __ATOMIC_RELEASE);
	return 0;
fail:;
	int err = errno;
	/* A failed MAP_FIXED may have unmapped the range: reserve it again before Linux reuses it. */
	twz_rt_unmap_local(slot);
	return -err;
}

/* Another thread holds the slot for mapping: wait until it is done (it holds no lock we hold;
 * the slot state is its only word). */
static void twz_rt_await_mapping(uint64_t slot)
{
	while(__atomic_load_n(twz_rt_state(slot), __ATOMIC_ACQUIRE) == TWZ_RT_SLOT_MAPPING)
		sched_yield();
}

/* Put the bare reservation back over the whole window: every object this process mapped, the
 * view included, maps again from the view on its next touch. For a process whose address space
 * changes meaning: a fork (its own traps), a thread host or BECOME (another view). Other threads
 * must not touch the window meanwhile. */
static int twz_rt_drop_mappings(void)
{
	if(mmap(twz_rt_slot_base(WINDOW_START), TWZ_RT_WINDOW_BYTES, PROT_NONE,
	     TWZ_RT_RESERVE_FLAGS | MAP_FIXED, -1, 0)
	   == MAP_FAILED)
		return -errno;
	memset(twz_rt.slot_state, 0, sizeof(twz_rt.slot_state));
	twz_rt.view_mapped = 0;
	return 0;
}

/* An object ID in the environment, as twzd writes it (Twizzler's IDFMT, "hi:lo"): 0 and *id,
 * -ENOENT if the variable is not set, -EINVAL if it is no ID. */
static int twz_rt_env_id(const char *name, objid_t *id)
{
	const char *text = getenv(name);
	if(!text)
		return -ENOENT;
	char *end;
	uint64_t hi = strtoull(text, &end, 16), lo;
	if(*end != ':')
		return -EINVAL;
	lo = strtoull(end + 1, &end, 16);
	if(*end)
		return -EINVAL;
	*id = MKID(hi, lo);
	return 0;
}

/* ---- the view -------------------------------------------------------------------------------- */

static inline char *twz_rt_view_base(void)
{
	return twz_rt_slot_base(SLOT_CVIEW) + OBJ_NULLPAGE_SIZE;
}

static inline struct viewentry *twz_rt_ve(uint64_t slot)
{
	return (struct viewentry *)(twz_rt_view_base() + VIEW_ENTRIES) + slot;
}

/* Snapshot a view entry; 1 if it is honoured (VE_VALID and res0 == res1 == 0, as Twizzler's
 * kernel requires). Re-reads while the flags move, since writers clear VE_VALID around an
 * update (twz_rt_view_set). */
static int twz_rt_ve_read(uint64_t slot, objid_t *id, uint32_t *flags)
{
	*id = 0;
	*flags = 0;
	if(!twz_rt.view_mapped || slot >= VIEW_NSLOTS)
		return 0;
	struct viewentry *ve = twz_rt_ve(slot);
	uint64_t res0;
	uint32_t f, res1;
	do {
		f = __atomic_load_n(&ve->flags, __ATOMIC_ACQUIRE);
		*id = ve->id;
		res0 = ve->res0;
		res1 = ve->res1;
	} while(__atomic_load_n(&ve->flags, __ATOMIC_ACQUIRE) != f);
	*flags = f;
	return (f & VE_VALID) && res0 == 0 && res1 == 0;
}

static int twz_rt_map_view(int fd, objid_t id)
{
	int r = twz_rt_reserve_window();
	if(r < 0)
		return r;
	if(twz_rt.view_mapped)
		return twz_rt.view_id == id ? 0 : -EBUSY;
	if(!twz_rt_claim(SLOT_CVIEW, 0))
		return -EBUSY;
	r = twz_rt_map_fd(SLOT_CVIEW, fd, 0, id);
	if(r < 0)
		return r;
	twz_rt.view_id = id;
	twz_rt.view_mapped = 1;
	return 0;
}

/* ---- fault classification ----------------------------------------------------------------- */

static uint32_t twz_rt_access(const ucontext_t *uc)
{
	uint64_t err = (uint64_t)uc->uc_mcontext.gregs[REG_ERR];
	if(err & TWZ_RT_PF_FETCH)
		return FAULT_OBJECT_EXEC;
	return (err & TWZ_RT_PF_WRITE) ? FAULT_OBJECT_WRITE : FAULT_OBJECT_READ;
}

/* An unmapped slot was touched and claimed (its state was `seen`): map what the view names
 * there. 1 = mapped (retry), 0 = *f. */
static int twz_rt_map_entry(struct twz_fault_record *f, objid_t id, uint32_t vflags, uint8_t seen)
{
	long fd = sys_lx_objfd(id, (int)(vflags & (VE_READ | VE_WRITE | VE_EXEC)));
	if(fd < 0) {
		__atomic_store_n(twz_rt_state(f->slot), seen, __ATOMIC_RELEASE);
		if(fd == -EACCES) {
			f->fault = FAULT_SCTX;
		} else {
			f->fault = FAULT_OBJECT;
			f->flags |= fd == -ENOENT ? FAULT_OBJECT_EXIST : FAULT_OBJECT_UNKNOWN;
		}
		return 0;
	}
	int r = twz_rt_map_fd(f->slot, (int)fd, (vflags & VE_EXEC) && !(vflags & VE_WRITE), id);
	close((int)fd);
	if(r < 0) {
		f->fault = FAULT_OBJECT;
		f->flags |= FAULT_OBJECT_UNKNOWN;
		return 0;
	}
	return 1;
}

/* Decide what a fault in the window means. 1 = the slot is mapped now, retry the access;
 * 0 = *f holds the Twizzler fault to deliver. */
static int twz_rt_resolve(struct twz_fault_record *f, uint32_t access)
{
	objid_t id;
	uint32_t vflags;
	int valid = twz_rt_ve_read(f->slot, &id, &vflags);
	if(f->slot == SLOT_CVIEW && twz_rt.view_mapped) {
		/* The view slot is the runtime's own mapping, whatever the view says about it. */
		id = twz_rt.view_id;
		vflags = VE_READ | VE_WRITE | VE_VALID;
		valid = 1;
	}
	f->objid_lo = ID_LO(id);
	f->objid_hi = ID_HI(id);
	f->flags = access;
	if((f->addr & (OBJ_MAXSIZE - 1)) < OBJ_NULLPAGE_SIZE) {
		f->fault = FAULT_NULL;
		return 0;
	}
	uint8_t state = __atomic_load_n(twz_rt_state(f->slot), __ATOMIC_ACQUIRE);
	if(state == TWZ_RT_SLOT_MAPPING) {
		twz_rt_await_mapping(f->slot);
		return 1;
	}
	/* Every finished mapping is readable, so a read fault on a "mapped" slot means another
	 * thread just put the reservation back: map again. */
	if(!state || access == FAULT_OBJECT_READ) {
		if(!valid) {
			f->fault = FAULT_OBJECT;
			f->flags |= FAULT_OBJECT_NOMAP;
			return 0;
		}
		return twz_rt_claim(f->slot, state) ? twz_rt_map_entry(f, id, vflags, state) : 1;
	}
	/* Mapped, and the mapping refused the access: the view did not grant it (FAULT_OBJECT; a
	 * writable entry grants no exec, W^X), or it did and the object's permissions did not
	 * (twzd gave a narrower fd: FAULT_SCTX). */
	uint32_t entry = (vflags & VE_WRITE) ? vflags & ~(uint32_t)VE_EXEC : vflags;
	uint32_t granted = (access == FAULT_OBJECT_WRITE) ? VE_WRITE : VE_EXEC;
	f->fault = (entry & granted) ? FAULT_SCTX : FAULT_OBJECT;
	return 0;
}

/* ---- delivery ------------------------------------------------------------------------------ */

struct twz_rt_guard {
	sigjmp_buf env;
	struct twz_fault_record *record;
};

/* initial-exec: the handler reads it, and a dlopened module's dynamic TLS could be allocated
 * (malloc) on a thread's first access, which must not happen inside a signal handler. */
static __thread struct twz_rt_guard *twz_rt_guard_current __attribute__((tls_model("initial-exec")));
static int twz_rt_guarded(void (*op)(void *), void *ctx, struct twz_fault_record *f);

static void twz_rt_put(char *buf, size_t *len, size_t cap, const char *s)
{
	while(*s && *len < cap)
		buf[(*len)++] = *s++;
}

static void twz_rt_put_hex(char *buf, size_t *len, size_t cap, uint64_t v, int digits)
{
	char tmp[17];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while(v || n < digits);
	while(n && *len < cap)
		buf[(*len)++] = tmp[--n];
}

/* No one takes the fault: say what happened in one write(2) (async-signal-safe) and exit the way
 * a Twizzler thread dies of an unhandled fault, in a status Linux can carry. */
static void twz_rt_die(const struct twz_fault_record *f)
{
	static const char *const names[] = TWZ_FAULT_NAMES_INIT;
	char buf[256];
	size_t len = 0, cap = sizeof(buf) - 1;
	twz_rt_put(buf, &len, cap, "twz: unhandled ");
	twz_rt_put(buf, &len, cap, f->fault >= 0 && f->fault < NUM_FAULTS ? names[f->fault] : "fault");
	twz_rt_put(buf, &len, cap, " at 0x");
	twz_rt_put_hex(buf, &len, cap, f->addr, 1);
	twz_rt_put(buf, &len, cap, " ip 0x");
	twz_rt_put_hex(buf, &len, cap, f->ip, 1);
	twz_rt_put(buf, &len, cap, " (object ");
	twz_rt_put_hex(buf, &len, cap, f->objid_hi, 16);
	twz_rt_put(buf, &len, cap, ":");
	twz_rt_put_hex(buf, &len, cap, f->objid_lo, 16);
	twz_rt_put(buf, &len, cap, ", slot 0x");
	twz_rt_put_hex(buf, &len, cap, f->slot, 1);
	twz_rt_put(buf, &len, cap, ", flags 0x");
	twz_rt_put_hex(buf, &len, cap, f->flags, 1);
	twz_rt_put(buf, &len, cap, ")");
	if(f->fault == FAULT_SCTX) /* the refused access: the permission the context lacks */
		twz_rt_put(buf, &len, cap, (f->flags & FAULT_OBJECT_EXEC)    ? ": no EXEC in the security context"
		                           : (f->flags & FAULT_OBJECT_WRITE) ? ": no WRITE in the security context"
		                                                             : ": no READ in the security context");
	twz_rt_put(buf, &len, cap, "\n");
	ssize_t w = write(2, buf, len);
	(void)w;
	_exit(TWZ_FAULT_EXIT_BASE + f->fault);
}

#define TWZ_FAULT_IMPLEMENTATION
#include <twz/fault.h> /* FAULT_EXCEPTION, FAULT_SIGNAL, the upcall into the view's handler */
#define TWZ_BECOME_IMPLEMENTATION
#include <twz/become.h>

#ifdef TWZ_RT_PYTHON
/* Faults taken by CPython's own C code (a memoryview over an object, say) cannot be unwound, so
 * the access completes on a scratch page and the fault waits here for the Python signal handler.
 * Lock-free: any thread's signal handler claims an entry with a CAS; `seq` keeps them in order. */
enum { TWZ_RT_PEND_FREE, TWZ_RT_PEND_BUSY, TWZ_RT_PEND_READY };

static struct {
	uint32_t state;
	uint64_t seq;
	struct twz_fault_record rec;
} twz_rt_pending[TWZ_RT_PENDING_MAX];
static uint64_t twz_rt_pending_seq;

static int twz_rt_defer(const struct twz_fault_record *f)
{
	int sig = __atomic_load_n(&twz_rt.fault_signal, __ATOMIC_ACQUIRE);
	int null = (f->addr & (OBJ_MAXSIZE - 1)) < OBJ_NULLPAGE_SIZE;
	/* A scratch page cannot stand in for instructions, nor for a page of the view itself (the
	 * handler reads the view, and only twzd could give its mapping back). */
	if(!sig || (f->flags & FAULT_OBJECT_EXEC) || (f->slot == SLOT_CVIEW && !null)
	   || f->fault == FAULT_EXCEPTION)
		return 0; /* an exception cannot be completed either: the instruction would repeat */
	int memory = f->fault != FAULT_SIGNAL; /* FAULT_SIGNAL interrupted nothing to complete */
	for(int i = 0; i < TWZ_RT_PENDING_MAX; i++) {
		uint32_t expect = TWZ_RT_PEND_FREE;
		if(!__atomic_compare_exchange_n(&twz_rt_pending[i].state, &expect, TWZ_RT_PEND_BUSY, 0,
		     __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			continue;
		void *page = (void *)(uintptr_t)(f->addr & ~(uint64_t)(PAGE_SIZE - 1));
		if(memory
		   && mmap(page, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		        -1, 0)
		        == MAP_FAILED) {
			__atomic_store_n(&twz_rt_pending[i].state, TWZ_RT_PEND_FREE, __ATOMIC_RELEASE);
			return 0;
		}
		twz_rt_pending[i].rec = *f;
		twz_rt_pending[i].rec.tid = (long)syscall(SYS_gettid);
		twz_rt_pending[i].seq = __atomic_fetch_add(&twz_rt_pending_seq, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&twz_rt_pending[i].state, TWZ_RT_PEND_READY, __ATOMIC_RELEASE);
		/* Python runs signal handlers in the main thread only, whichever thread faulted: a real
		 * signal to it (not PyErr_SetInterruptEx, which only sets a flag) also interrupts a
		 * main thread blocked in join() or a lock. libtwz's handler then raises the fault
		 * there, or hands it to the faulting thread (libtwz/fault.py). */
		syscall(SYS_tgkill, getpid(), getpid(), sig);
		return 1;
	}
	return 0; /* queue full: faults are not being taken; dying loudly beats losing one */
}

int twz_rt_take_pending(struct twz_fault_record *f)
{
	int oldest = -1;
	for(int i = 0; i < TWZ_RT_PENDING_MAX; i++) {
		if(__atomic_load_n(&twz_rt_pending[i].state, __ATOMIC_ACQUIRE) == TWZ_RT_PEND_READY
		   && (oldest < 0 || twz_rt_pending[i].seq < twz_rt_pending[oldest].seq))
			oldest = i;
	}
	if(oldest < 0)
		return 0;
	*f = twz_rt_pending[oldest].rec;
	if(f->fault == FAULT_SIGNAL) {
		/* no scratch page to take back */
	} else if((f->addr & (OBJ_MAXSIZE - 1)) < OBJ_NULLPAGE_SIZE) {
		/* The null page is never mapped, so only the scratch page goes. */
		void *page = (void *)(uintptr_t)(f->addr & ~(uint64_t)(PAGE_SIZE - 1));
		mmap(page, PAGE_SIZE, PROT_NONE, TWZ_RT_RESERVE_FLAGS | MAP_FIXED, -1, 0);
	} else {
		twz_rt_unmap_local(f->slot);
	}
	__atomic_store_n(&twz_rt_pending[oldest].state, TWZ_RT_PEND_FREE, __ATOMIC_RELEASE);
	return 1;
}
#else
int twz_rt_take_pending(struct twz_fault_record *f)
{
	(void)f;
	return 0; /* native programs never queue: an unguarded fault ends the process */
}
#endif

void twz_rt_set_fault_signal(int signum)
{
	__atomic_store_n(&twz_rt.fault_signal, signum, __ATOMIC_RELEASE);
}

static void twz_rt_deliver(const struct twz_fault_record *f, ucontext_t *uc)
{
	struct twz_rt_guard *g = twz_rt_guard_current;
	if(g && f->fault != FAULT_SIGNAL) { /* a signal is no fault of the guarded code */
		*g->record = *f;
		/* The guard's sigsetjmp saved no mask (that would cost a syscall per copy); unblock what
		 * the kernel blocked for this handler by restoring the interrupted mask. */
		sigprocmask(SIG_SETMASK, &uc->uc_sigmask, NULL);
		siglongjmp(g->env, 1);
	}
#ifdef TWZ_RT_PYTHON
	if(twz_rt_defer(f))
		return;
#else
	if(twz_rt_upcall(f, uc))
		return;
#endif
	twz_rt_die(f);
}

/* Not ours: hand it to whoever had the signal before, as if we were not there. */
static void twz_rt_chain(int sig, siginfo_t *si, void *ctx)
{
	const struct sigaction *old = sig == SIGBUS ? &twz_rt.old_bus
	                              : sig == SIGFPE ? &twz_rt.old_fpe
	                              : sig == SIGILL ? &twz_rt.old_ill
	                              : sig == SIGTRAP ? &twz_rt.old_trap
	                              : sig == TWZ_SIGNAL_SIGNUM ? &twz_rt.old_signal
	                                                         : &twz_rt.old_segv;
	if(old->sa_flags & SA_SIGINFO) {
		old->sa_sigaction(sig, si, ctx);
		return;
	}
	if(old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
		old->sa_handler(sig);
		return;
	}
	/* Default action (an ignored fault would just repeat): restore it and re-raise, so the
	 * process dies of this signal exactly as it would have without the runtime. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(sig, &dfl, NULL);
	raise(sig);
}

static void twz_rt_on_fault(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
	if(sig != SIGSEGV && sig != SIGBUS) {
		int saved_errno = errno;
		twz_rt_on_trap(sig, si, uc);
		errno = saved_errno;
		return;
	}
	/* si_code <= 0: sent by kill(2) and friends, si_addr is meaningless. */
	if(si->si_code <= 0 || !twz_rt_in_window(addr >> TWZ_RT_SLOT_SHIFT)) {
		twz_rt_chain(sig, si, ctx);
		return;
	}
	int saved_errno = errno;
	struct twz_fault_record f = {
		.addr = addr,
		.ip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP],
		.slot = addr >> TWZ_RT_SLOT_SHIFT,
	};
	uint32_t access = twz_rt_access(uc);
	if(sig == SIGBUS) {
		/* The object file cannot back the page (truncated, or the store is out of space). */
		objid_t id;
		uint32_t vflags;
		twz_rt_ve_read(f.slot, &id, &vflags);
		f.fault = FAULT_PAGE;
		f.flags = access;
		f.data[0] = (addr & (OBJ_MAXSIZE - 1)) / PAGE_SIZE;
		f.objid_lo = ID_LO(id);
		f.objid_hi = ID_HI(id);
		twz_rt_deliver(&f, uc);
	} else if(!twz_rt_resolve(&f, access)) {
		twz_rt_deliver(&f, uc);
	}
	errno = saved_errno;
}

/* ---- set-up -------------------------------------------------------------------------------- */

/* The fault handler needs a stack of its own only to report a stack overflow; give the calling
 * thread one unless it has one already. */
static int twz_rt_altstack(void)
{
	stack_t cur;
	if(sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE))
		return 0;
	void *mem = mmap(NULL, TWZ_RT_ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
	  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if(mem == MAP_FAILED)
		return -errno;
	stack_t ss = { .ss_sp = mem, .ss_size = TWZ_RT_ALTSTACK_SIZE, .ss_flags = 0 };
	if(sigaltstack(&ss, NULL) < 0) {
		int err = errno;
		munmap(mem, TWZ_RT_ALTSTACK_SIZE);
		return -err;
	}
	return 0;
}

static int twz_rt_install_handlers(void)
{
	int r = twz_rt_altstack();
	if(r < 0)
		return r;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = twz_rt_on_fault;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if(sigaction(SIGSEGV, &sa, &twz_rt.old_segv) < 0 || sigaction(SIGBUS, &sa, &twz_rt.old_bus) < 0
	   || sigaction(SIGFPE, &sa, &twz_rt.old_fpe) < 0 || sigaction(SIGILL, &sa, &twz_rt.old_ill) < 0
	   || sigaction(SIGTRAP, &sa, &twz_rt.old_trap) < 0
	   || sigaction(TWZ_SIGNAL_SIGNUM, &sa, &twz_rt.old_signal) < 0)
		return -errno;
	return 0;
}

static int twz_thread_install(void); /* twz/thread.h: serves the trapped THRD_SYNC/THRD_CTL */
static void twz_rt_after_fork(void); /* twz/thread.h: a plain fork's child maps anew */

/* Hand twzd a userfaultfd of this mm, which twzd uses to serve lazy copies (docs/userfaultfd.md).
 * Made here, after exec: exec replaces the mm a uffd belongs to. Our own copy is closed at once,
 * so that only twzd reads its events. Without one (no userfaultfd, an older twzd), twzd copies
 * eagerly whatever this process maps. */
static long twz_rt_new_uffd(void)
{
	long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if(fd < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if(dev >= 0) {
			fd = ioctl(dev, TWZ_RT_USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
	}
	return fd;
}

/* Two: a uffd's write-protection is synchronous (lazy copies' sources) or WP_ASYNC (tracking
 * writes to persistent objects) as a whole. */
static void twz_rt_uffd_handover(void)
{
	long fd = twz_rt_new_uffd();
	if(fd < 0)
		return;
	long wfd = twz_rt_new_uffd();
	twz_rt.uffd_given = sys_lx_uffd((int)fd, (int)wfd) == 0;
	close((int)fd);
	if(wfd >= 0)
		close((int)wfd);
}

int twz_rt_reserve_window(void)
{
	if(twz_rt.reserved)
		return 0;
	void *want = twz_rt_slot_base(WINDOW_START);
	void *got = mmap(want, TWZ_RT_WINDOW_BYTES, PROT_NONE, TWZ_RT_RESERVE_FLAGS | MAP_FIXED_NOREPLACE,
	  -1, 0);
	if(got == MAP_FAILED)
		return -errno;
	if(got != want) { /* kernels before 4.17 take NOREPLACE as a hint */
		munmap(got, TWZ_RT_WINDOW_BYTES);
		return -EEXIST;
	}
	int r = twz_rt_install_handlers();
	if(r == 0)
		r = twz_thread_install();
	if(r < 0) {
		munmap(want, TWZ_RT_WINDOW_BYTES);
		return r;
	}
	twz_rt.reserved = 1;
	twz_rt_uffd_handover();
	pthread_atfork(NULL, NULL, twz_rt_after_fork);
	return 0;
}

int twz_rt_init(uint64_t view_lo, uint64_t view_hi)
{
	objid_t id = MKID(view_hi, view_lo);
	long fd = sys_lx_objfd(id, VE_READ | VE_WRITE);
	if(fd < 0)
		return (int)fd;
	int r = twz_rt_map_view((int)fd, id);
	close((int)fd);
	return r;
}

int twz_rt_init_fd(int fd, uint64_t view_lo, uint64_t view_hi)
{
	return twz_rt_map_view(fd, MKID(view_hi, view_lo));
}

/* ---- guarded access ------------------------------------------------------------------------ */

/* Run op(ctx) with a recovery point: a fault inside it is recorded in *f (if given) and the
 * call returns -1 instead of the process taking the fault; otherwise 0. Guards nest. */
static int twz_rt_guarded(void (*op)(void *), void *ctx, struct twz_fault_record *f)
{
	struct twz_fault_record spare;
	struct twz_rt_guard g;
	struct twz_rt_guard *outer = twz_rt_guard_current;
	g.record = f ? f : &spare;
	if(sigsetjmp(g.env, 0)) {
		twz_rt_guard_current = outer;
		return -1;
	}
	twz_rt_guard_current = &g;
	/* Keep the compiler from moving the work outside the guarded region. */
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	op(ctx);
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	twz_rt_guard_current = outer;
	return 0;
}

struct twz_rt_copy_args {
	void *dst;
	const void *src;
	size_t n;
};

static void twz_rt_copy_op(void *ctx)
{
	struct twz_rt_copy_args *a = ctx;
	memcpy(a->dst, a->src, a->n);
}

int twz_rt_copy(void *dst, const void *src, size_t n, struct twz_fault_record *f)
{
	struct twz_rt_copy_args a = { dst, src, n };
	return twz_rt_guarded(twz_rt_copy_op, &a, f);
}

/* ---- view: entries, lock, slot allocator ---------------------------------------------------- */

/* Tell twzd the entry changed (Twizzler's INVL_KSO on the current view), and drop our own
 * mapping of the slot so that the next touch maps what the entry says now. */
static int twz_rt_invalidate(uint64_t slot)
{
	struct sys_invalidate_op op = {
		.id = KSO_CURRENT_VIEW,
		.offset = slot << TWZ_RT_SLOT_SHIFT,
		.length = OBJ_MAXSIZE,
		.flags = KSOI_VALID | KSOI_CURRENT,
	};
	long r = sys_invl_kso(&op, 1);
	if(twz_rt_in_window(slot) && slot != SLOT_CVIEW)
		twz_rt_unmap_local(slot);
	return r < 0 ? (int)r : 0;
}

int twz_rt_view_set(long slot, uint64_t lo, uint64_t hi, uint32_t flags)
{
	if(!twz_rt.view_mapped)
		return -ENXIO;
	if(slot < 0 || slot >= VIEW_NSLOTS)
		return -EINVAL;
	struct viewentry *ve = twz_rt_ve((uint64_t)slot);
	uint32_t old = __atomic_fetch_and(&ve->flags, ~(uint32_t)VE_VALID, __ATOMIC_SEQ_CST);
	ve->id = MKID(hi, lo);
	ve->res0 = 0;
	ve->res1 = 0;
	__atomic_store_n(&ve->flags, flags | VE_VALID, __ATOMIC_RELEASE);
	return (old & VE_VALID) ? twz_rt_invalidate((uint64_t)slot) : 0;
}

int twz_rt_view_get(long slot, uint64_t *lo, uint64_t *hi, uint32_t *flags)
{
	if(!twz_rt.view_mapped)
		return -ENXIO;
	if(slot < 0 || slot >= VIEW_NSLOTS)
		return -EINVAL;
	struct viewentry *ve = twz_rt_ve((uint64_t)slot);
	*flags = __atomic_load_n(&ve->flags, __ATOMIC_ACQUIRE);
	*lo = ID_LO(ve->id);
	*hi = ID_HI(ve->id);
	return 0;
}

/* The allocator's lock is the first word of the view's `struct mutex lock` (VIEW_LOCK), so every
 * thread of every process sharing the view is excluded. Holders run a few hundred instructions
 * (plus one INVL_KSO on release), so spin briefly, then yield the CPU: on a 2-CPU machine a
 * spinning waiter can starve the holder. A holder that dies inside leaves the view locked; the
 * view object is then unusable for allocation, as with Twizzler's own (non-robust) mutex. */
static void twz_rt_view_lock(void)
{
	uint64_t *word = (uint64_t *)(twz_rt_view_base() + VIEW_LOCK);
	for(unsigned i = 0;; i++) {
		uint64_t unlocked = 0;
		if(__atomic_compare_exchange_n(word, &unlocked, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return;
		if(i < TWZ_RT_LOCK_SPINS)
			__builtin_ia32_pause();
		else
			sched_yield();
	}
}

static void twz_rt_view_unlock(void)
{
	__atomic_store_n((uint64_t *)(twz_rt_view_base() + VIEW_LOCK), 0, __ATOMIC_RELEASE);
}

static inline uint8_t *twz_rt_bitmap(void)
{
	return (uint8_t *)(twz_rt_view_base() + VIEW_BITMAP);
}

static long twz_rt_bitmap_alloc(void)
{
	uint8_t *bm = twz_rt_bitmap();
	for(long s = SLOT_ALLOC_START; s <= SLOT_ALLOC_MAX; s++) {
		if(!(bm[s / 8] & (1u << (s % 8)))) {
			bm[s / 8] |= (uint8_t)(1u << (s % 8));
			return s;
		}
	}
	return -ENOSPC;
}

static void twz_rt_bitmap_free(long s)
{
	twz_rt_bitmap()[s / 8] &= (uint8_t)~(1u << (s % 8));
}

/* Buckets are keyed by (id, flags), hashed by id % VIEW_NSLOTS; a collision continues in the
 * chain array, `chain` holding the next index + 1 (0 ends it). A released bucket keeps its chain
 * link with id 0, so lookups walk past it and inserts reuse it, as Twizzler's libtwz does. */
static struct viewrepr_bucket *twz_rt_buckets(void)
{
	return (struct viewrepr_bucket *)(twz_rt_view_base() + VIEW_BUCKETS);
}

static struct viewrepr_bucket *twz_rt_chain_buckets(void)
{
	return (struct viewrepr_bucket *)(twz_rt_view_base() + VIEW_CHAIN);
}

static struct viewrepr_bucket *twz_rt_bucket_lookup(objid_t id, uint32_t flags)
{
	struct viewrepr_bucket *b = twz_rt_buckets();
	int32_t idx = (int32_t)(id % VIEW_NSLOTS);
	do {
		if(b[idx].id == id && b[idx].flags == flags)
			return &b[idx];
		idx = b[idx].chain - 1;
		b = twz_rt_chain_buckets();
	} while(idx >= 0);
	return NULL;
}

static struct viewrepr_bucket *twz_rt_bucket_insert(objid_t id, uint32_t flags, long slot)
{
	struct viewrepr_bucket *b = twz_rt_buckets(), *last = NULL;
	int32_t idx = (int32_t)(id % VIEW_NSLOTS);
	do {
		if(b[idx].id == 0) {
			last = &b[idx];
			goto fill;
		}
		last = &b[idx];
		idx = b[idx].chain - 1;
		b = twz_rt_chain_buckets();
	} while(idx >= 0);
	struct viewrepr_bucket *chain = twz_rt_chain_buckets();
	for(int32_t i = 0; i < VIEW_NSLOTS; i++) {
		if(chain[i].id == 0 && chain[i].chain == 0) {
			last->chain = i + 1;
			last = &chain[i];
			goto fill;
		}
	}
	return NULL;
fill:
	last->id = id;
	last->flags = flags;
	last->slot = (uint64_t)slot;
	last->refs = 1;
	return last;
}

long twz_rt_slot_alloc(uint64_t lo, uint64_t hi, uint32_t flags)
{
	objid_t id = MKID(hi, lo);
	if(!twz_rt.view_mapped)
		return -ENXIO;
	if(id == 0) /* 0 marks a free bucket */
		return -EINVAL;
	twz_rt_view_lock();
	long slot;
	struct viewrepr_bucket *b = twz_rt_bucket_lookup(id, flags);
	if(b) {
		b->refs++;
		slot = (long)b->slot;
	} else if((slot = twz_rt_bitmap_alloc()) >= 0) {
		if(twz_rt_bucket_insert(id, flags, slot)) {
			int r = twz_rt_view_set(slot, lo, hi, flags);
			if(r < 0)
				slot = r;
		} else {
			twz_rt_bitmap_free(slot);
			slot = -ENOSPC;
		}
	}
	twz_rt_view_unlock();
	return slot;
}

void twz_rt_slot_release(long slot)
{
	if(!twz_rt.view_mapped || slot < SLOT_ALLOC_START || slot > SLOT_ALLOC_MAX)
		return;
	twz_rt_view_lock();
	objid_t id;
	uint32_t vflags;
	struct viewrepr_bucket *b = NULL;
	/* The entry names the bucket. A slot repointed with twz_rt_view_set since its allocation
	 * matches none and stays allocated, as in Twizzler, where release takes the (id, flags). */
	if(twz_rt_ve_read((uint64_t)slot, &id, &vflags))
		b = twz_rt_bucket_lookup(id, vflags & ~(uint32_t)VE_VALID);
	if(b && b->slot == (uint64_t)slot && b->refs > 0 && --b->refs == 0) {
		b->id = 0;
		b->flags = 0;
		b->slot = 0;
		struct viewentry *ve = twz_rt_ve((uint64_t)slot);
		__atomic_store_n(&ve->flags, 0, __ATOMIC_RELEASE);
		ve->id = 0;
		twz_rt_bitmap_free(slot);
		twz_rt_invalidate((uint64_t)slot);
	}
	twz_rt_view_unlock();
}

/* ---- atomics ------------------------------------------------------------------------------- */

uint64_t twz_rt_load64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

void twz_rt_store64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

uint64_t twz_rt_cas64(uint64_t *p, uint64_t expected, uint64_t desired)
{
	__atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	return expected;
}

uint64_t twz_rt_fetch_add64(uint64_t *p, uint64_t v)
{
	return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

uint64_t twz_rt_fetch_or64(uint64_t *p, uint64_t v)
{
	return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

uint64_t twz_rt_fetch_and64(uint64_t *p, uint64_t v)
{
	return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}

/* ---- native start-up ----------------------------------------------------------------------- */

#ifndef TWZ_RT_PYTHON
/* twzd starts native programs with TWZ_VIEW set; without it this is a plain Linux process and
 * the runtime stays out of the way. A Twizzler process whose view cannot be mapped has no
 * address space to run in, so it stops here (127, like a failed exec). */
__attribute__((constructor)) static void twz_rt_from_env(void)
{
	const char *text = getenv("TWZ_VIEW");
	if(!text)
		return;
	objid_t view;
	int r = twz_rt_env_id("TWZ_VIEW", &view);
	if(r == 0)
		r = twz_rt_init(ID_LO(view), ID_HI(view));
	if(r == 0)
		r = twz_thread_adopt_env();
	if(r < 0) {
		fprintf(stderr, "twz: cannot set up the address space for view %s: %s\n", text, strerror(-r));
		_exit(127);
	}
}
#endif

#define TWZ_THREAD_IMPLEMENTATION
#include <twz/thread.h> /* its implementation, which uses the runtime's internals above */
#endif /* TWZ_RT_IMPLEMENTATION */
#endif /* TWZ_RT_H */
