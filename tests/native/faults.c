/* Every Twizzler fault, produced and delivered through the view's fault handler
 * (tests/test_faults.py). Modes: handled, thread (the same on a thread without an alternate
 * signal stack), dbl, raw, unhandled-div, unhandled-signal. */
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static jmp_buf escape;
static volatile int signalled;
static volatile int zero;

static objid_t my_thread(void)
{
	const char *t = getenv("TWZ_THREAD");
	char *end;
	uint64_t hi = strtoull(t, &end, 16);
	return MKID(hi, strtoull(end + 1, NULL, 16));
}

static void on_fault(int fault, void *info, void *ud)
{
	switch(fault) {
	case FAULT_EXCEPTION: {
		struct fault_exception_info *e = info;
		printf("EXCEPTION code=%lu ud=%s\n", (unsigned long)e->code, (char *)ud);
		fflush(stdout);
		if(e->code != 3) /* #BP resumes after the int3; the others would repeat */
			longjmp(escape, 1);
		return;
	}
	case FAULT_OBJECT: {
		struct fault_object_info *o = info;
		uint64_t slot = o->addr >> 30;
		printf("OBJECT flags=%#lx slot=%#lx\n", (unsigned long)o->flags, (unsigned long)slot);
		objid_t id;
		if(sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &id) == 0)
			twz_rt_view_set((long)slot, ID_LO(id), ID_HI(id), VE_READ | VE_WRITE);
		return; /* retried: the slot is mapped now */
	}
	case FAULT_NULL: {
		struct fault_null_info *n = info;
		printf("NULL addr=%#lx\n", (unsigned long)n->addr);
		fflush(stdout);
		longjmp(escape, 1);
	}
	case FAULT_SIGNAL: {
		struct fault_signal_info *s = info;
		printf("SIGNAL %ld %ld %ld %ld\n", s->args[0], s->args[1], s->args[2], s->args[3]);
		signalled = 1;
		return;
	}
	case FAULT_PPTR: {
		struct fault_pptr_info *p = info;
		printf("PPTR info=%u ptr=%p\n", p->info, p->ptr);
		return;
	}
	}
}

/* A raw view handler, entered by the upcall: rdi = fault, rsi = info. */
static void raw_handler(long fault, void *info)
{
	if(fault == FAULT_FAULT) {
		struct fault_fault_info *ff = info;
		struct fault_null_info *n = (void *)(ff + 1);
		size_t len16 = (sizeof(*ff) + ff->len + 15) & ~(size_t)15;
		uint64_t *above = (uint64_t *)((char *)info + len16);
		/* The frame: old rbp and rip above the info; old rsp, rsi, rdi below it. */
		printf("FAULT_FAULT of %u len=%u addr=%#lx rip_ok=%d rsp_ok=%d aligned=%d\n", ff->fault_nr,
		  ff->len, (unsigned long)n->addr, above[1] == n->ip,
		  ((uint64_t *)info)[-1] > (uint64_t)(uintptr_t)info,
		  (((uintptr_t)info - 24) & 15) == 8);
	} else {
		struct fault_exception_info *e = info;
		printf("raw fault=%ld code=%lu\n", fault, (unsigned long)e->code);
	}
	fflush(stdout);
	_exit(0);
}

static void *on_a_thread(void *arg)
{
	if(!setjmp(escape))
		__asm__ volatile("ud2");
	__asm__ volatile("int3");
	volatile long *p = (long *)((0x10210UL << 30) + 0x1000);
	*p = 43;
	printf("thread retried %ld\n", *p);
	return arg;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "handled";
	char *view = (char *)((uint64_t)SLOT_CVIEW << 30) + OBJ_NULLPAGE_SIZE;
	if(!strcmp(mode, "handled")) {
		for(int f = 0; f < NUM_FAULTS; f++)
			if(f != FAULT_FAULT && twz_fault_set(f, on_fault, "ud") != 0)
				return 2;
		if(!setjmp(escape)) {
			volatile int x = 100 / zero;
			(void)x;
		}
		if(!setjmp(escape))
			__asm__ volatile("ud2");
		__asm__ volatile("int3");
		printf("after int3\n");
		volatile long *p = (long *)((0x10200UL << 30) + 0x1000);
		*p = 42;
		printf("retried %ld\n", *p);
		if(!setjmp(escape))
			printf("%d\n", *(volatile int *)((0x10200UL << 30) + 0x10));
		objid_t me = my_thread();
		long r = sys_signal(me, 1, -2, 3, 1L << 40);
		while(!signalled)
			;
		printf("signal returned %ld\n", r);
		struct fault_pptr_info pi = { .info = FAULT_PPTR_INVALID, .ptr = (void *)0x1234 };
		twz_fault_raise(FAULT_PPTR, &pi);
		printf("done\n");
		return 0;
	}
	if(!strcmp(mode, "thread")) {
		twz_fault_set(FAULT_EXCEPTION, on_fault, "t");
		twz_fault_set(FAULT_OBJECT, on_fault, "t");
		pthread_t t;
		pthread_create(&t, NULL, on_a_thread, NULL);
		pthread_join(t, NULL);
		return 0;
	}
	if(!strcmp(mode, "dbl")) {
		*(uint64_t *)(view + VIEW_DBL_FAULT_HANDLER) = (uint64_t)(uintptr_t)raw_handler;
		return *(volatile char *)((0x10200UL << 30) + 0x40);
	}
	if(!strcmp(mode, "raw")) {
		*(uint64_t *)(view + VIEW_FAULT_HANDLER) = (uint64_t)(uintptr_t)raw_handler;
		__asm__ volatile("ud2");
		return 3;
	}
	if(!strcmp(mode, "unhandled-div"))
		return 100 / zero;
	if(!strcmp(mode, "unhandled-signal")) {
		sys_signal(my_thread(), 5, 6, 7, 8);
		for(;;)
			;
	}
	return 2;
}
