/* twz/fault.h - Twizzler's faults for native programs: fault-info structures, the fault table
 * (us/libtwz/fault.c: twz_fault_set, twz_fault_raise) and the view's fault handlers, on the
 * runtime's signal handlers. twz/rt.h includes it; include that.
 *
 * A fault no guarded runtime call takes is delivered as Twizzler's kernel delivers it
 * (reference/twizzler.md §3.5, arch_thread_raise_call): if the view's fault_handler
 * (VIEW_FAULT_HANDLER) is set, the signal handler builds the upcall frame on the interrupted
 * stack -- below the 128-byte red zone the old rip and rbp, then the fault-info rounded to 16
 * bytes, then the old rsp, rsi and rdi -- and returns into the handler with rdi = the fault
 * number, rsi = the info, rsp 8 off 16-byte alignment as after a call. (A thread without an
 * alternate signal stack runs the signal handler on that same stack, just below the red zone;
 * the frame then goes 2 KiB below the handler's own frame, the same frame further down.) If
 * only dbl_fault_handler
 * is set, it gets FAULT_FAULT with struct fault_fault_info wrapping the original info. With
 * neither, or when the handler itself faults at its first instruction, or after 5000 deliveries
 * of faults at one address in a row, the program ends with one line on stderr and exit status
 * TWZ_FAULT_EXIT_BASE + fault (Twizzler: 256 + fault).
 *
 * twz_fault_set points both view handlers at twz_fault_entry, Twizzler's __twz_fault_entry: it
 * saves the registers C may clobber (flags and the SSE state too), calls the function set for
 * the fault, restores them and resumes the interrupted code at its faulting instruction, so a
 * handler that fixes the cause (maps the slot, say) returns and the access is retried. A fault
 * without a function set ends the program as above.
 *
 * The Linux signals behind the faults: SIGSEGV in the slot window (FAULT_OBJECT, FAULT_NULL,
 * FAULT_SCTX), SIGBUS there (FAULT_PAGE), SIGFPE, SIGILL and SIGTRAP anywhere
 * (FAULT_EXCEPTION: x86 vector and error code from the signal context), and TWZ_SIGNAL_SIGNUM
 * queued by twzd for the SIGNAL system call (FAULT_SIGNAL, its four longs in the siginfo).
 */
#ifndef TWZ_FAULT_H
#define TWZ_FAULT_H

#include <twz/sys.h>

typedef void (*twz_fault_fn)(int fault, void *info, void *userdata);

/* Twizzler's twz_fault_set: `fn` (NULL: none) handles `fault` on every thread from now on.
 * 0, -EINVAL (no such fault; FAULT_FAULT is the runtime's) or -ENXIO (no view). */
int twz_fault_set(int fault, twz_fault_fn fn, void *userdata);
void *twz_fault_get_userdata(int fault);
/* Twizzler's twz_fault_raise: deliver a fault found by C code (FAULT_PPTR from a pointer
 * resolver, say) to its function, which returns here; without one the program ends. */
void twz_fault_raise(int fault, void *info);
/* The entry twz_fault_set puts into the view (Twizzler's __twz_fault_entry); not C-callable. */
void twz_fault_entry(void);

#endif /* TWZ_FAULT_H */

#if defined(TWZ_FAULT_IMPLEMENTATION) && !defined(TWZ_FAULT_IMPLEMENTED)
#define TWZ_FAULT_IMPLEMENTED

#include <sys/syscall.h>

#define TWZ_RT_RED_ZONE 128
#define TWZ_RT_FAULT_REPEAT_MAX 5000
#define TWZ_RT_X86_XM 19 /* SIMD floating-point exception: arg0 is MXCSR, as in Twizzler */

static void twz_rt_deliver(const struct twz_fault_record *f, ucontext_t *uc);
static void twz_rt_chain(int sig, siginfo_t *si, void *ctx);

/* Twizzler's fault-info for a record, into buf (room for 64 bytes); its length. */
static size_t twz_rt_fault_info(const struct twz_fault_record *f, void *buf)
{
	objid_t id = MKID(f->objid_hi, f->objid_lo);
	switch(f->fault) {
	case FAULT_NULL: {
		struct fault_null_info i = { .ip = f->ip, .addr = f->addr };
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	case FAULT_EXCEPTION: {
		struct fault_exception_info i = { .ip = f->ip, .code = f->data[0], .arg0 = f->data[1] };
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	case FAULT_SCTX: {
		uint32_t need = (f->flags & FAULT_OBJECT_WRITE) ? FE_WRITE
		                : (f->flags & FAULT_OBJECT_EXEC) ? FE_EXEC : FE_READ;
		struct fault_sctx_info i = { .target = id, .ip = f->ip, .addr = f->addr, .pneed = need };
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	case FAULT_PAGE: {
		struct fault_page_info i = {
			.objid = id, .vaddr = f->addr, .pgnr = f->data[0], .info = f->flags, .ip = f->ip };
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	case FAULT_SIGNAL: {
		struct fault_signal_info i;
		memcpy(i.args, f->data, sizeof(i.args));
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	default: {
		struct fault_object_info i = { .objid = id, .ip = f->ip, .addr = f->addr, .flags = f->flags };
		memcpy(buf, &i, sizeof(i));
		return sizeof(i);
	}
	}
}

/* SIGFPE, SIGILL, SIGTRAP: FAULT_EXCEPTION with the x86 vector. TWZ_SIGNAL_SIGNUM: FAULT_SIGNAL
 * with the four longs twzd put where the siginfo's fields go (SI_QUEUE carries 32 bytes). */
static void twz_rt_on_trap(int sig, siginfo_t *si, ucontext_t *uc)
{
	greg_t *g = uc->uc_mcontext.gregs;
	struct twz_fault_record f;
	memset(&f, 0, sizeof(f));
	f.ip = (uint64_t)g[REG_RIP];
	if(sig == TWZ_SIGNAL_SIGNUM) {
		if(si->si_code != SI_QUEUE) {
			twz_rt_chain(sig, si, uc);
			return;
		}
		f.fault = FAULT_SIGNAL;
		memcpy(f.data, (const char *)si + offsetof(siginfo_t, si_pid), 4 * sizeof(long));
	} else {
		if(si->si_code <= 0) { /* sent by kill(2): not an exception of this thread */
			twz_rt_chain(sig, si, uc);
			return;
		}
		f.fault = FAULT_EXCEPTION;
		f.addr = (uint64_t)(uintptr_t)si->si_addr;
		f.data[0] = (uint64_t)g[REG_TRAPNO];
		f.data[1] = (g[REG_TRAPNO] == TWZ_RT_X86_XM && uc->uc_mcontext.fpregs)
		              ? uc->uc_mcontext.fpregs->mxcsr : (uint64_t)g[REG_ERR];
		f.slot = f.addr >> TWZ_RT_SLOT_SHIFT;
		if(twz_rt_in_window(f.slot)) {
			objid_t id;
			uint32_t vflags;
			twz_rt_ve_read(f.slot, &id, &vflags);
			f.objid_lo = ID_LO(id);
			f.objid_hi = ID_HI(id);
		}
	}
	twz_rt_deliver(&f, uc);
}

/* The guarded twin of twz_rt_copy for a call into code that may fault: 0 with *ret, or -1 with
 * *f. The call is abandoned at the fault, so the code must hold no locks (libtwz uses it to
 * let Python catch FAULT_EXCEPTION from machine code it runs). */
struct twz_rt_call_args {
	long (*fn)(long);
	long arg, ret;
};

static void twz_rt_call_op(void *ctx)
{
	struct twz_rt_call_args *a = ctx;
	a->ret = a->fn(a->arg);
}

int twz_rt_call(long (*fn)(long), long arg, long *ret, struct twz_fault_record *f)
{
	struct twz_rt_call_args a = { fn, arg, 0 };
	if(twz_rt_guarded(twz_rt_call_op, &a, f) < 0)
		return -1;
	if(ret)
		*ret = a.ret;
	return 0;
}

#ifndef TWZ_RT_PYTHON
static struct {
	twz_fault_fn fn;
	void *userdata;
} twz_rt_fault_table[NUM_FAULTS];

/* The fault being handled on this thread (for the exit message), the resume address of the
 * upcall being returned from, and the repeat guard. Local-exec TLS: the entry's assembly names
 * twz_rt_resume_rip@tpoff, so the implementation must be in the executable, not a library. */
static __thread struct twz_fault_record twz_rt_last_fault __attribute__((tls_model("initial-exec")));
static __thread unsigned twz_rt_fault_repeats __attribute__((tls_model("initial-exec")));
__thread uint64_t twz_rt_resume_rip __attribute__((tls_model("local-exec"), visibility("hidden")));

static size_t twz_rt_round16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Called from the signal handler: turn the return from it into Twizzler's upcall. 1 if the
 * view has a handler to run, else 0. */
static int twz_rt_upcall(const struct twz_fault_record *f, ucontext_t *uc)
{
	if(!twz_rt.view_mapped)
		return 0;
	char *view = twz_rt_view_base();
	uint64_t handler = __atomic_load_n((uint64_t *)(view + VIEW_FAULT_HANDLER), __ATOMIC_ACQUIRE);
	unsigned char info[sizeof(struct fault_fault_info) + 64] __attribute__((aligned(16)));
	size_t len = twz_rt_fault_info(f, info);
	int fault = f->fault;
	if(!handler) {
		handler = __atomic_load_n((uint64_t *)(view + VIEW_DBL_FAULT_HANDLER), __ATOMIC_ACQUIRE);
		if(!handler)
			return 0;
		struct fault_fault_info ff = { .fault_nr = (uint32_t)fault, .len = (uint32_t)len };
		memmove(info + sizeof(ff), info, len);
		memcpy(info, &ff, sizeof(ff));
		len += sizeof(ff);
		fault = FAULT_FAULT;
	}
	greg_t *g = uc->uc_mcontext.gregs;
	if((uint64_t)g[REG_RIP] == handler)
		return 0; /* the handler faults before it can run: Twizzler's loop check */
	if(f->ip == twz_rt_last_fault.ip && f->addr == twz_rt_last_fault.addr) {
		if(++twz_rt_fault_repeats >= TWZ_RT_FAULT_REPEAT_MAX)
			return 0;
	} else {
		twz_rt_fault_repeats = 0;
	}
	twz_rt_last_fault = *f;
	uint64_t old_rsp = (uint64_t)g[REG_RSP];
	uintptr_t top = (old_rsp - TWZ_RT_RED_ZONE) & ~(uintptr_t)15;
	uintptr_t here = (uintptr_t)__builtin_frame_address(0);
	if(here < old_rsp && old_rsp - here < (1u << 20) && here - 2048 < top)
		top = (here - 2048) & ~(uintptr_t)15; /* on the same stack: stay clear of this frame */
	uint64_t *sp = (uint64_t *)top;
	*--sp = (uint64_t)g[REG_RIP]; /* right above the info: twz_rt_resume_rip_of finds it */
	*--sp = (uint64_t)g[REG_RBP];
	char *infop = (char *)sp - twz_rt_round16(len);
	memcpy(infop, info, len);
	sp = (uint64_t *)infop;
	*--sp = old_rsp;
	*--sp = (uint64_t)g[REG_RSI];
	*--sp = (uint64_t)g[REG_RDI];
	g[REG_RSP] = (greg_t)(uintptr_t)sp;
	g[REG_RDI] = fault;
	g[REG_RSI] = (greg_t)(uintptr_t)infop;
	g[REG_RIP] = (greg_t)handler;
	return 1;
}

__attribute__((used)) static void twz_rt_fault_dispatch(int fault, void *info)
{
	twz_fault_fn fn = NULL;
	if(fault >= 0 && fault < NUM_FAULTS)
		fn = __atomic_load_n(&twz_rt_fault_table[fault].fn, __ATOMIC_ACQUIRE);
	if(fn) {
		fn(fault, info, twz_rt_fault_table[fault].userdata);
		return;
	}
	twz_rt_die(&twz_rt_last_fault); /* FAULT_FAULT, or a fault nobody asked for */
}

/* Where the interrupted code resumes: the old rip, right above the frame's info. */
__attribute__((used)) static uint64_t twz_rt_resume_rip_of(int fault, const void *info)
{
	size_t len = fault == FAULT_FAULT
	               ? sizeof(struct fault_fault_info) + ((const struct fault_fault_info *)info)->len
	               : (fault == FAULT_NULL ? sizeof(struct fault_null_info)
	                  : fault == FAULT_EXCEPTION ? sizeof(struct fault_exception_info)
	                  : fault == FAULT_SIGNAL ? sizeof(struct fault_signal_info)
	                  : sizeof(struct fault_object_info)); /* OBJECT, SCTX, PAGE: 48 bytes */
	return ((const uint64_t *)((const char *)info + twz_rt_round16(len)))[1];
}

/* Entered from the upcall frame: [rsp] old rdi, [rsp+8] old rsi, [rsp+16] old rsp; rdi = fault,
 * rsi = info. Restoring rsp and rip together needs a place that is neither a register nor the
 * interrupted stack (its red zone may be live): the thread's twz_rt_resume_rip. (A signal whose
 * own handler takes an upcall between the two last instructions would clobber it.) */
__asm__(".text\n"
        ".globl twz_fault_entry\n"
        ".type twz_fault_entry, @function\n"
        "twz_fault_entry:\n"
        "	pushfq\n"
        "	pushq %rax\n"
        "	pushq %rcx\n"
        "	pushq %rdx\n"
        "	pushq %r8\n"
        "	pushq %r9\n"
        "	pushq %r10\n"
        "	pushq %r11\n"
        "	pushq %rdi\n"
        "	pushq %rsi\n"
        "	subq $520, %rsp\n"
        "	fxsave64 (%rsp)\n"
        "	call twz_rt_fault_dispatch\n"
        "	movq 528(%rsp), %rdi\n"
        "	movq 520(%rsp), %rsi\n"
        "	call twz_rt_resume_rip_of\n"
        "	movq %rax, %fs:twz_rt_resume_rip@tpoff\n"
        "	fxrstor64 (%rsp)\n"
        "	addq $536, %rsp\n"
        "	popq %r11\n"
        "	popq %r10\n"
        "	popq %r9\n"
        "	popq %r8\n"
        "	popq %rdx\n"
        "	popq %rcx\n"
        "	popq %rax\n"
        "	popfq\n"
        "	popq %rdi\n"
        "	popq %rsi\n"
        "	popq %rsp\n"
        "	jmp *%fs:twz_rt_resume_rip@tpoff\n"
        ".size twz_fault_entry, .-twz_fault_entry\n");

int twz_fault_set(int fault, twz_fault_fn fn, void *userdata)
{
	if(fault < 0 || fault >= NUM_FAULTS || fault == FAULT_FAULT)
		return -EINVAL;
	if(!twz_rt.view_mapped)
		return -ENXIO;
	twz_rt_fault_table[fault].userdata = userdata;
	__atomic_store_n(&twz_rt_fault_table[fault].fn, fn, __ATOMIC_RELEASE);
	char *view = twz_rt_view_base();
	uint64_t entry = (uint64_t)(uintptr_t)twz_fault_entry;
	__atomic_store_n((uint64_t *)(view + VIEW_FAULT_HANDLER), entry, __ATOMIC_RELEASE);
	__atomic_store_n((uint64_t *)(view + VIEW_DBL_FAULT_HANDLER), entry, __ATOMIC_RELEASE);
	return 0;
}

void *twz_fault_get_userdata(int fault)
{
	return fault >= 0 && fault < NUM_FAULTS ? twz_rt_fault_table[fault].userdata : NULL;
}

void twz_fault_raise(int fault, void *info)
{
	twz_fault_fn fn = NULL;
	if(fault >= 0 && fault < NUM_FAULTS)
		fn = __atomic_load_n(&twz_rt_fault_table[fault].fn, __ATOMIC_ACQUIRE);
	if(fn) {
		fn(fault, info, twz_rt_fault_table[fault].userdata);
		return;
	}
	struct twz_fault_record f;
	memset(&f, 0, sizeof(f));
	f.fault = fault;
	f.ip = (uint64_t)(uintptr_t)__builtin_return_address(0);
	if(fault == FAULT_PPTR && info) {
		const struct fault_pptr_info *pi = info;
		f.addr = (uint64_t)(uintptr_t)pi->ptr;
		f.objid_lo = ID_LO(pi->objid);
		f.objid_hi = ID_HI(pi->objid);
		f.flags = pi->info;
		f.slot = f.addr >> TWZ_RT_SLOT_SHIFT;
	}
	twz_rt_die(&f);
}
#endif /* !TWZ_RT_PYTHON */

#endif /* TWZ_FAULT_IMPLEMENTATION */
