/* twz/thread.h - Twizzler threads, thread_sync, mutexes and events in a Linux process.
 *
 * Included by twz/rt.h (its implementation comes with TWZ_RT_IMPLEMENTATION). docs/threads.md
 * explains the design; in short:
 *   - thread_sync is a shared futex on the object word. Linux keys a shared futex on a MAP_SHARED
 *     file mapping by (inode, offset): Twizzler's (object, offset) sync point, whatever slot or
 *     process maps it. Sleeping and waking never visit twzd.
 *   - The raw THRD_SYNC and THRD_CTL syscalls are trapped (SECCOMP_RET_TRAP, by a filter the
 *     runtime stacks on twzd's) and served here, in the SIGSYS handler, with the same code.
 *   - A Twizzler thread finds its repr through the gs base: gs = the repr's slot address, as
 *     Twizzler's THRD_SPAWN sets it (the repr is at gs + OBJ_NULLPAGE_SIZE).
 *   - twz_thread_spawn registers the thread with twzd (THRD_SPAWN) and starts it: a pthread
 *     for the caller's view, a forked process (which calls LX_THRD_HOST) for another view. The
 *     new thread's first call, LX_THRD_START, tells twzd its Linux thread (for SIGNAL).
 */
#include <twz/rt.h>

#ifndef TWZ_THREAD_H
#define TWZ_THREAD_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <twz/sys.h>

/* Twizzler's THRD_SYNC, served in-process: several SLEEP/WAKE ops, 32- or 64-bit words, sleeps
 * only if every SLEEP compares equal, one relative timeout. res of each op: 1 or -errno. Returns
 * 0 if any op succeeded (else the last error), -ETIMEDOUT if the sleep timed out. At most
 * TWZ_SYNC_MAX_SLEEP_WORDS futex words per sleep (a 64-bit word takes two). */
#define TWZ_SYNC_MAX_SLEEP_WORDS 128
long twz_thread_sync_multiple(size_t count, struct sys_thread_sync_args *args,
  const struct timespec *timeout);
/* One op on a 64-bit word (twz_thread_sync) or a 32-bit one (twz_thread_sync32). */
long twz_thread_sync(int op, uint64_t *addr, uint64_t val, const struct timespec *timeout);
long twz_thread_sync32(int op, uint32_t *addr, uint32_t val, const struct timespec *timeout);
/* For callers that hold addresses as integers (libtwz): one sleep on a 64-bit word with a
 * timeout in nanoseconds (< 0: none), and one wake of up to `count` sleepers (< 0: all). */
long twz_sync_sleep64(uintptr_t addr, uint64_t expected, int64_t timeout_ns);
long twz_sync_wake(uintptr_t addr, long count);

/* The calling thread's repr (gs base + OBJ_NULLPAGE_SIZE), or NULL outside a Twizzler thread. */
void *twz_thread_repr_base(void);
/* Make the repr mapped at `slot` the calling thread's (gs = slot address). 0 or -errno. */
int twz_thread_set_repr_slot(long slot);
/* The calling thread is done: tell twzd (exit code, EXIT word set and woken, root detach).
 * The Linux thread goes on running; twz_thread_exit ends it too. */
long twz_thread_exited(uint64_t code);
/* Twizzler's twz_thread_exit: the code into syncinfos[EXIT], then THRD_CTL_EXIT. */
void twz_thread_exit(uint64_t code) __attribute__((noreturn));

/* A forked child of a Twizzler process, once twzd has its record (LX_THRD_HOST; LX_FORKED, which
 * the runtime sends itself after a plain fork): hand twzd this mm's own userfaultfds, drop every
 * mapping inherited from the parent (none of them trapped here) and run in view (hi:lo). */
int twz_rt_enter_view(uint64_t view_lo, uint64_t view_hi);
/* on != 0: the calling thread's forks make thread hosts, which register with LX_THRD_HOST, so
 * the runtime's own after-fork step (LX_FORKED) leaves their children alone. */
void twz_rt_fork_hosts(int on);

/* Native spawn: start(arg) runs as Twizzler thread `t->tid` (a fresh repr) in the caller's view
 * (view == 0) or in `view`. The register ABI is Twizzler's: rdi = arg, rsi/rdx = the thread ID. */
struct twz_thread {
	objid_t tid;
	long slot;     /* where the repr is mapped in the caller's view */
	int pid;       /* the hosting child, for another view; 0 otherwise */
	objid_t owner; /* the program's thread the repr is tied to until the join; 0 if none */
};
int twz_thread_spawn(struct twz_thread *t, objid_t view, void (*start)(void *), void *arg);
/* Wait for the thread's EXIT sync point; its exit code. */
uint64_t twz_thread_join(struct twz_thread *t);

/* The process's first thread ($TWZ_THREAD, set by twzd) becomes a Twizzler thread: its repr is
 * mapped at SLOT_THRD and gs points at it. 0 (also without $TWZ_THREAD), or -errno. */
int twz_thread_adopt_env(void);

/* This boot's reset code (KCONF_RDRESET), asked of twzd once per process. */
uint64_t twz_reset_code(void);

/* Twizzler's crash-resetting mutex (twz/mutex.h): an all-zero mutex is a valid, free one, and a
 * mutex whose resetcode is not this boot's is free again (its holder died with an earlier twzd). */
struct mutex {
	uint64_t sleep; /* 0 free, 1 held, 2 held with sleepers */
	uint64_t resetcode;
};
void mutex_init(struct mutex *m);
void mutex_acquire(struct mutex *m);
int mutex_try_acquire(struct mutex *m); /* 1 if taken */
void mutex_release(struct mutex *m);

/* Twizzler's events (twz/event.h): 64 event bits per header word; event_wait sleeps on several
 * headers at once and returns how many events are ready (0 on timeout). */
struct evhdr {
	uint64_t point;
};
struct event {
	struct evhdr *hdr;
	uint64_t events;
	uint64_t result;
	uint64_t __resv[2];
	uint64_t flags;
};
void event_init(struct event *ev, struct evhdr *hdr, uint64_t events);
int event_wait(size_t count, struct event *ev, const struct timespec *timeout);
int event_wake(struct evhdr *hdr, uint64_t events, long wcount);
uint64_t event_clear(struct evhdr *hdr, uint64_t events);
uint64_t event_poll(struct evhdr *hdr, uint64_t events);

#endif /* TWZ_THREAD_H */

/* rt.h includes this file again at the end of its implementation, which this part uses. */
#if defined(TWZ_RT_IMPLEMENTATION) && defined(TWZ_THREAD_IMPLEMENTATION) \
  && !defined(TWZ_THREAD_IMPLEMENTATION_DONE)
#define TWZ_THREAD_IMPLEMENTATION_DONE

#include <asm/prctl.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* 5.16+, missing from the 6.1 glibc headers */
#endif
#define TWZ_SYNC_INT_MAX 0x7fffffff
#define TWZ_SYNC_SPINS 100
#define TWZ_SYS_SECCOMP 1 /* si_code of a SIGSYS from SECCOMP_RET_TRAP */

static inline long twz_futex(void *addr, int op, uint32_t val, const struct timespec *ts)
{
	/* Never FUTEX_PRIVATE_FLAG: the key must be (inode, offset) to reach other processes. */
	return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static long twz_futex_wake(void *addr, long n)
{
	long r = twz_futex(addr, FUTEX_WAKE, (uint32_t)(n < 0 || n > TWZ_SYNC_INT_MAX ? TWZ_SYNC_INT_MAX : n),
	  NULL);
	return r < 0 ? -errno : r;
}

/* Copy caller memory as a kernel would. In the slot window the copy is guarded: it goes through
 * the fault handler, which maps a slot on first touch (the futex calls cannot), and a fault is
 * -EFAULT. Elsewhere it is a plain copy, so a wild pointer kills the caller with SIGSEGV as any
 * C library call would (docs/threads.md). */
static int twz_sync_copy(void *dst, const void *src, size_t n, int to_caller)
{
	uintptr_t user = (uintptr_t)(to_caller ? dst : src);
	if(twz_rt_in_window(user >> TWZ_RT_SLOT_SHIFT) || twz_rt_in_window((user + n - 1) >> TWZ_RT_SLOT_SHIFT))
		return twz_rt_copy(dst, src, n, NULL) < 0 ? -EFAULT : 0;
	memcpy(dst, src, n);
	return 0;
}

static int twz_sync_load(const void *addr, int is32, uint64_t *v)
{
	uint32_t v32;
	if(is32) {
		if(twz_sync_copy(&v32, addr, 4, 0) < 0)
			return -EFAULT;
		*v = v32;
		return 0;
	}
	return twz_sync_copy(v, addr, 8, 0);
}

long twz_thread_sync_multiple(size_t count, struct sys_thread_sync_args *uargs,
  const struct timespec *utimeout)
{
	if(count > MAX_SLEEPS)
		return -EINVAL;
	struct futex_waitv wv[TWZ_SYNC_MAX_SLEEP_WORDS];
	unsigned nw = 0;
	int sleep = 1, any_ok = 0;
	long last = 0;
	struct timespec tmo;
	if(utimeout && twz_sync_copy(&tmo, utimeout, sizeof(tmo), 0) < 0)
		return -EFAULT;
	for(size_t i = 0; i < count; i++) {
		struct sys_thread_sync_args a;
		if(twz_sync_copy(&a, &uargs[i], sizeof(a), 0) < 0)
			return -EFAULT;
		int is32 = a.flags & THREAD_SYNC_32BIT;
		long res = 1;
		uint64_t cur;
		if((a.flags & ~(uint32_t)THREAD_SYNC_32BIT) || (uintptr_t)a.addr % (is32 ? 4 : 8)
		   || (a.op != THREAD_SYNC_SLEEP && a.op != THREAD_SYNC_WAKE)) {
			res = -EINVAL;
		} else if(twz_sync_load(a.addr, is32, &cur) < 0) {
			res = -EFAULT;
		} else if(a.op == THREAD_SYNC_WAKE) {
			res = (long)a.arg ? twz_futex_wake(a.addr, (long)a.arg) : 0;
			res = res < 0 ? res : 1;
		} else if(nw + (is32 ? 1 : 2) > TWZ_SYNC_MAX_SLEEP_WORDS) {
			res = -E2BIG;
		} else {
			uint64_t want = is32 ? (uint32_t)a.arg : a.arg;
			sleep &= cur == want;
			/* A 64-bit word sleeps on both halves, low (the wake address) first: a change
			 * of either half then either fails the kernel's compare or finds us queued. */
			wv[nw++] = (struct futex_waitv){ .val = (uint32_t)want, .uaddr = (uintptr_t)a.addr,
				                            .flags = FUTEX_32 };
			if(!is32)
				wv[nw++] = (struct futex_waitv){ .val = (uint32_t)(want >> 32),
					                            .uaddr = (uintptr_t)a.addr + 4, .flags = FUTEX_32 };
		}
		if(res < 0)
			last = res;
		else
			any_ok = 1;
		uint64_t ures = (uint64_t)res;
		if(twz_sync_copy(&uargs[i].res, &ures, sizeof(ures), 1) < 0)
			return -EFAULT;
	}
	if(!sleep || !nw || last)
		return any_ok ? 0 : last;
	long r;
	if(nw == 1) {
		r = twz_futex((void *)(uintptr_t)wv[0].uaddr, FUTEX_WAIT, (uint32_t)wv[0].val,
		  utimeout ? &tmo : NULL);
	} else {
		struct timespec abs;
		if(utimeout) {
			clock_gettime(CLOCK_MONOTONIC, &abs);
			abs.tv_sec += tmo.tv_sec + (abs.tv_nsec + tmo.tv_nsec) / 1000000000;
			abs.tv_nsec = (abs.tv_nsec + tmo.tv_nsec) % 1000000000;
		}
		r = syscall(SYS_futex_waitv, wv, nw, 0, utimeout ? &abs : NULL, CLOCK_MONOTONIC);
	}
	/* EAGAIN (the word moved) and EINTR are wake-ups: Twizzler callers re-check their words. */
	if(r < 0 && errno == ETIMEDOUT)
		return -ETIMEDOUT;
	return 0;
}

long twz_thread_sync(int op, uint64_t *addr, uint64_t val, const struct timespec *timeout)
{
	struct sys_thread_sync_args a = { .addr = addr, .arg = val, .op = (uint32_t)op };
	return twz_thread_sync_multiple(1, &a, timeout);
}

long twz_thread_sync32(int op, uint32_t *addr, uint32_t val, const struct timespec *timeout)
{
	struct sys_thread_sync_args a = { .addr = (uint64_t *)addr, .arg = val, .op = (uint32_t)op,
		                              .flags = THREAD_SYNC_32BIT };
	return twz_thread_sync_multiple(1, &a, timeout);
}

long twz_sync_sleep64(uintptr_t addr, uint64_t expected, int64_t timeout_ns)
{
	struct timespec ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
	return twz_thread_sync(THREAD_SYNC_SLEEP, (uint64_t *)addr, expected, timeout_ns < 0 ? NULL : &ts);
}

long twz_sync_wake(uintptr_t addr, long count)
{
	return twz_thread_sync(THREAD_SYNC_WAKE, (uint64_t *)addr, (uint64_t)count, NULL);
}

/* ---- the calling thread's repr ------------------------------------------------------------- */

void *twz_thread_repr_base(void)
{
	uint64_t gs = 0;
	if(getauxval(AT_HWCAP2) & 2 /* HWCAP2_FSGSBASE: the kernel lets user space read gs */)
		__asm__ volatile("rdgsbase %0" : "=r"(gs));
	else
		syscall(SYS_arch_prctl, ARCH_GET_GS, &gs);
	return gs ? (char *)(uintptr_t)gs + OBJ_NULLPAGE_SIZE : NULL;
}

int twz_thread_set_repr_slot(long slot)
{
	return syscall(SYS_arch_prctl, ARCH_SET_GS, (unsigned long)slot << 30) < 0 ? -errno : 0;
}

static objid_t twz_thread_self_id(void)
{
	char *repr = twz_thread_repr_base();
	objid_t id = 0;
	if(repr)
		twz_rt_copy(&id, repr + THRD_REPRID, sizeof(id), NULL);
	return id;
}

long twz_thread_exited(uint64_t code)
{
	objid_t id = twz_thread_self_id();
	return id ? sys_lx_thrd_exit(id, (long)code) : -ESRCH;
}

static long twz_thread_ctl(long op, long arg)
{
	switch(op) {
	case THRD_CTL_SET_FS:
		return syscall(SYS_arch_prctl, ARCH_SET_FS, arg) < 0 ? -errno : 0;
	case THRD_CTL_SET_GS:
		return syscall(SYS_arch_prctl, ARCH_SET_GS, arg) < 0 ? -errno : 0;
	case THRD_CTL_EXIT: {
		uint64_t v;
		if(arg && twz_sync_load((void *)arg, 0, &v) == 0)
			twz_futex_wake((void *)arg, -1);
		char *repr = twz_thread_repr_base();
		uint64_t code = 0;
		if(repr)
			twz_rt_copy(&code, repr + THRD_SYNCINFOS + 8 * THRD_SYNC_EXIT, 8, NULL);
		twz_thread_exited(code);
		syscall(SYS_exit, (int)(code & 0xff));
		__builtin_unreachable();
	}
	default:
		return -EINVAL; /* SET_IOPL included: port I/O is not for a Linux process */
	}
}

void twz_thread_exit(uint64_t code)
{
	char *repr = twz_thread_repr_base();
	if(repr)
		twz_rt_copy(repr + THRD_SYNCINFOS + 8 * THRD_SYNC_EXIT, &code, 8, NULL);
	sys_thrd_ctl(THRD_CTL_EXIT, repr ? (long)(repr + THRD_SYNCS + 8 * THRD_SYNC_EXIT) : 0);
	syscall(SYS_exit, (int)(code & 0xff)); /* not reached: the handler ends the thread */
	__builtin_unreachable();
}

/* ---- the raw syscalls, trapped ----------------------------------------------------------- */

static struct sigaction twz_thread_old_sys;
/* Set once at install from TWZ_TRACE (twzd sets it at spawn under `twzrun --trace`): calls served
 * here never reach twzd, so when traced the handler reports each one with LX_TRACE. */
static int twz_thread_traced;

static void twz_thread_report(long nr, long ret, const greg_t *r)
{
	sys_lx_trace(nr - TWZ_LINUX_NR(0), ret, r[REG_RDI], r[REG_RSI], r[REG_RDX]);
}

static void twz_thread_on_sigsys(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	greg_t *r = uc->uc_mcontext.gregs;
	if(si->si_code != TWZ_SYS_SECCOMP) {
		if(twz_thread_old_sys.sa_flags & SA_SIGINFO)
			twz_thread_old_sys.sa_sigaction(sig, si, ctx);
		return;
	}
	long nr = si->si_syscall, ret;
	if(nr != TWZ_LINUX_NR(SYS_THRD_SYNC) && nr != TWZ_LINUX_NR(SYS_THRD_CTL)
	   && (twz_thread_old_sys.sa_flags & SA_SIGINFO)) {
		twz_thread_old_sys.sa_sigaction(sig, si, ctx); /* someone else's trapped call */
		return;
	}
	int saved_errno = errno;
	if(nr == TWZ_LINUX_NR(SYS_THRD_SYNC))
		ret = twz_thread_sync_multiple((size_t)r[REG_RDI], (struct sys_thread_sync_args *)r[REG_RSI],
		  (const struct timespec *)r[REG_RDX]);
	else if(nr == TWZ_LINUX_NR(SYS_THRD_CTL)) {
		if(twz_thread_traced && r[REG_RDI] == THRD_CTL_EXIT)
			twz_thread_report(nr, 0, r); /* now: EXIT does not return */
		ret = twz_thread_ctl(r[REG_RDI], r[REG_RSI]);
	} else
		ret = -ENOSYS;
	if(twz_thread_traced)
		twz_thread_report(nr, ret, r);
	r[REG_RAX] = ret;
	errno = saved_errno;
}

/* Called by twz_rt_reserve_window. twzd's filter sends THRD_SYNC and THRD_CTL to twzd, which
 * answers ENOSYS (a process without this runtime has nothing to serve them with). The runtime
 * stacks a filter of its own that traps them instead: SECCOMP_RET_TRAP takes precedence over
 * USER_NOTIF, so from here on they reach the SIGSYS handler above, in every thread (TSYNC) and
 * forked child. Outside twzd (no NO_NEW_PRIVS) nothing is stacked. */
static int twz_thread_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = twz_thread_on_sigsys;
	/* SA_NODEFER: a sleep can take minutes, and a nested trapped call (none today) must not
	 * kill the process as a blocked SIGSYS would. */
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if(sigaction(SIGSYS, &sa, &twz_thread_old_sys) < 0)
		return -errno;
	const char *trace = getenv("TWZ_TRACE");
	twz_thread_traced = trace && trace[0] == '1';
	if(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
		return 0;
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TWZ_LINUX_NR(SYS_THRD_SYNC), 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TWZ_LINUX_NR(SYS_THRD_CTL), 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
	if(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
		return errno ? -errno : -EAGAIN;
	return 0;
}

/* ---- views and spawning ------------------------------------------------------------------- */

static __thread int twz_rt_forking_host __attribute__((tls_model("initial-exec")));

void twz_rt_fork_hosts(int on)
{
	twz_rt_forking_host = on;
}

int twz_rt_enter_view(uint64_t view_lo, uint64_t view_hi)
{
	twz_rt.uffd_given = 0;
	twz_rt_uffd_handover();
	int r = twz_rt_drop_mappings();
	return r < 0 ? r : twz_rt_init(view_lo, view_hi);
}

/* pthread_atfork's child handler. Without it a plain fork's child would read a lazy copy's owed
 * pages as holes (and shmem would keep the zeros, for every process) and write sources behind
 * their copies' backs: userfaultfd registrations do not survive fork, and twzd could not tell
 * whose mm an EVENT_FORK uffd is. It would also share its parent's view object, whose slots it
 * would allocate and release as its own. If twzd refuses the record, the child stays as it was.
 * TWZ_VIEW follows, for the child's code and for what it execs. */
static void twz_rt_after_fork(void)
{
	objid_t view;
	if(twz_rt_forking_host || !twz_rt.view_mapped || sys_lx_forked(&view) < 0)
		return;
	char text[40];
	snprintf(text, sizeof(text), IDFMT, IDPR(view));
	setenv("TWZ_VIEW", text, 1);
	twz_rt_enter_view(ID_LO(view), ID_HI(view));
}

struct twz_thread_start {
	void (*start)(void *);
	void *arg;
	objid_t tid;
	long slot;
};

static void twz_thread_run(struct twz_thread_start *s)
{
	twz_thread_set_repr_slot(s->slot);
	/* twzd learns which Linux thread this is, for SIGNAL; should it fail, the thread still runs
	 * and a SIGNAL to it is -ENOENT. */
	sys_lx_thrd_start(s->tid);
	/* Twizzler's register ABI: rdi = arg, rsi/rdx = thread ID (lo, hi). */
	((void (*)(void *, uint64_t, uint64_t))(void (*)(void))s->start)(s->arg, ID_LO(s->tid),
	  ID_HI(s->tid));
	twz_thread_exited(0);
}

static void *twz_thread_pthread(void *p)
{
	struct twz_thread_start s = *(struct twz_thread_start *)p;
	free(p);
	twz_thread_run(&s);
	return NULL;
}

/* The join, or a spawn that failed: this program is done with the repr (libtwz's Thread.join
 * does the same). */
static void twz_thread_done(struct twz_thread *t)
{
	if(t->slot > 0)
		twz_rt_slot_release(t->slot);
	if(t->owner)
		sys_otie(t->owner, t->tid, OTIE_UNTIE);
}

int twz_thread_spawn(struct twz_thread *t, objid_t view, void (*start)(void *), void *arg)
{
	memset(t, 0, sizeof(*t));
	long r = sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE | MIP_DFL_USE, &t->tid);
	if(r < 0)
		return (int)r;
	/* A temporary of this program, as libtwz makes a Thread's repr: tied to the program's
	 * thread and deleted, so it goes once the join unties it and nothing maps it (or with the
	 * program), never to pile up in twzd. */
	if(twz_rt_env_id("TWZ_THREAD", &t->owner) < 0 || sys_otie(t->owner, t->tid, 0) < 0)
		t->owner = 0;
	if(t->owner)
		sys_odelete(t->tid, 0);
	struct sys_thrd_spawn_args sa = { .target_view = view, .start_func = start, .arg = arg };
	if((r = sys_thrd_spawn(t->tid, &sa, 0, NULL)) < 0
	   || (r = t->slot = twz_rt_slot_alloc(ID_LO(t->tid), ID_HI(t->tid), VE_READ | VE_WRITE)) < 0)
		goto fail;
	struct twz_thread_start *s = malloc(sizeof(*s));
	r = -ENOMEM;
	if(!s)
		goto fail;
	*s = (struct twz_thread_start){ .start = start, .arg = arg, .tid = t->tid, .slot = t->slot };
	if(view) {
		fflush(NULL);
		twz_rt_fork_hosts(1);
		int pid = fork();
		twz_rt_fork_hosts(0);
		if(pid < 0) {
			r = -errno;
			free(s);
			goto fail;
		}
		if(pid == 0) {
			if(sys_lx_thrd_host(t->tid) < 0 || twz_rt_enter_view(ID_LO(view), ID_HI(view)) < 0)
				_exit(127);
			s->slot = twz_rt_slot_alloc(ID_LO(t->tid), ID_HI(t->tid), VE_READ | VE_WRITE);
			twz_thread_run(s);
			fflush(NULL);
			_exit(0);
		}
		free(s);
		t->pid = pid;
		return 0;
	}
	pthread_t pt;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int e = pthread_create(&pt, &attr, twz_thread_pthread, s);
	pthread_attr_destroy(&attr);
	if(!e)
		return 0;
	free(s);
	r = -e;
fail:
	twz_thread_done(t);
	return (int)r;
}

int twz_thread_adopt_env(void)
{
	objid_t id;
	int r = twz_rt_env_id("TWZ_THREAD", &id);
	if(r == -ENOENT)
		return 0; /* not started by twzd as a Twizzler thread: no repr, gs stays 0 */
	/* Twizzler's TWZSLOT_THRD, relocated (abi/slots.py); spawned threads get allocated slots. */
	if(r == 0)
		r = twz_rt_view_set(SLOT_THRD, ID_LO(id), ID_HI(id), VE_READ | VE_WRITE);
	return r < 0 ? r : twz_thread_set_repr_slot(SLOT_THRD);
}

uint64_t twz_thread_join(struct twz_thread *t)
{
	char *repr = twz_rt_slot_base((uint64_t)t->slot) + OBJ_NULLPAGE_SIZE;
	uint64_t *exit_word = (uint64_t *)(repr + THRD_SYNCS + 8 * THRD_SYNC_EXIT);
	/* A host that died before twzd knew it (before LX_THRD_HOST) leaves the word unset for
	 * ever: look at it between sleeps. */
	const struct timespec check = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
	uint64_t code = THRD_EXIT_LOST;
	while(!__atomic_load_n(exit_word, __ATOMIC_ACQUIRE)) {
		twz_thread_sync(THREAD_SYNC_SLEEP, exit_word, 0, t->pid ? &check : NULL);
		if(t->pid && !__atomic_load_n(exit_word, __ATOMIC_ACQUIRE)
		   && waitpid(t->pid, NULL, WNOHANG) == t->pid) {
			t->pid = 0;
			goto done;
		}
	}
	if(t->pid)
		waitpid(t->pid, NULL, 0);
	code = *(uint64_t *)(repr + THRD_SYNCINFOS + 8 * THRD_SYNC_EXIT);
done:
	twz_thread_done(t);
	return code;
}

/* ---- mutex ---------------------------------------------------------------------------------- */

uint64_t twz_reset_code(void)
{
	static uint64_t code;
	uint64_t c = __atomic_load_n(&code, __ATOMIC_ACQUIRE);
	if(!c) {
		c = (uint64_t)sys_kconf(KCONF_RDRESET, 0);
		__atomic_store_n(&code, c, __ATOMIC_RELEASE);
	}
	return c;
}

void mutex_init(struct mutex *m)
{
	__atomic_store_n(&m->sleep, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&m->resetcode, twz_reset_code(), __ATOMIC_RELEASE);
}

/* A mutex from an earlier boot (or never initialised) is free: the first thread to notice
 * claims the reset with resetcode = ~0, clears the lock and stamps this boot's code. */
static void twz_mutex_check_reset(struct mutex *m)
{
	uint64_t now = twz_reset_code();
	uint64_t rc = __atomic_load_n(&m->resetcode, __ATOMIC_ACQUIRE);
	while(rc != now) {
		if(rc != ~(uint64_t)0
		   && __atomic_compare_exchange_n(&m->resetcode, &rc, ~(uint64_t)0, 0, __ATOMIC_ACQ_REL,
		     __ATOMIC_ACQUIRE)) {
			__atomic_store_n(&m->sleep, 0, __ATOMIC_RELAXED);
			__atomic_store_n(&m->resetcode, now, __ATOMIC_RELEASE);
			return;
		}
		sched_yield();
		rc = __atomic_load_n(&m->resetcode, __ATOMIC_ACQUIRE);
	}
}

int mutex_try_acquire(struct mutex *m)
{
	twz_mutex_check_reset(m);
	uint64_t free_ = 0;
	return __atomic_compare_exchange_n(&m->sleep, &free_, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void mutex_acquire(struct mutex *m)
{
	twz_mutex_check_reset(m);
	/* Drepper's three-state mutex (as Twizzler's): spin a little, then sleep on `sleep`. */
	for(int i = 0; i < TWZ_SYNC_SPINS; i++) {
		uint64_t c = 0;
		if(__atomic_compare_exchange_n(&m->sleep, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return;
		__builtin_ia32_pause();
	}
	uint64_t c = __atomic_exchange_n(&m->sleep, 2, __ATOMIC_ACQUIRE);
	while(c) {
		twz_futex(&m->sleep, FUTEX_WAIT, 2, NULL);
		c = __atomic_exchange_n(&m->sleep, 2, __ATOMIC_ACQUIRE);
	}
}

void mutex_release(struct mutex *m)
{
	if(__atomic_exchange_n(&m->sleep, 0, __ATOMIC_RELEASE) == 2)
		twz_futex_wake(&m->sleep, 1);
}

/* ---- events --------------------------------------------------------------------------------- */

void event_init(struct event *ev, struct evhdr *hdr, uint64_t events)
{
	memset(ev, 0, sizeof(*ev));
	ev->hdr = hdr;
	ev->events = events;
}

int event_wait(size_t count, struct event *ev, const struct timespec *timeout)
{
	if(count == 0 || count > TWZ_SYNC_MAX_SLEEP_WORDS / 2)
		return -EINVAL;
	struct sys_thread_sync_args args[TWZ_SYNC_MAX_SLEEP_WORDS / 2];
	for(;;) {
		int ready = 0;
		for(size_t i = 0; i < count; i++) {
			uint64_t p = __atomic_load_n(&ev[i].hdr->point, __ATOMIC_ACQUIRE);
			ev[i].result = p & ev[i].events;
			ready += ev[i].result != 0;
			args[i] = (struct sys_thread_sync_args){ .addr = &ev[i].hdr->point, .arg = p,
				                                     .op = THREAD_SYNC_SLEEP };
		}
		if(ready)
			return ready;
		long r = twz_thread_sync_multiple(count, args, timeout);
		if(r == -ETIMEDOUT)
			return 0;
		if(r < 0)
			return (int)r;
	}
}

int event_wake(struct evhdr *hdr, uint64_t events, long wcount)
{
	uint64_t old = __atomic_fetch_or(&hdr->point, events, __ATOMIC_ACQ_REL);
	if((old & events) == events)
		return 0; /* nothing newly set: nobody can be sleeping for it */
	return (int)twz_futex_wake(&hdr->point, wcount);
}

uint64_t event_clear(struct evhdr *hdr, uint64_t events)
{
	return __atomic_fetch_and(&hdr->point, ~events, __ATOMIC_ACQ_REL) & events;
}

uint64_t event_poll(struct evhdr *hdr, uint64_t events)
{
	return __atomic_load_n(&hdr->point, __ATOMIC_ACQUIRE) & events;
}

#endif /* TWZ_THREAD_IMPLEMENTATION */
