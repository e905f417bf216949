/* BECOME into another entry point in another view (tests/test_become.py). Modes: (none), thread
 * (a second thread becomes, no view change), race (a thread becomes while the process exits). */
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SHARED_SLOT 0x10100UL /* named in both views */
#define OLD_SLOT 0x10101UL    /* named only in the old view */

static char stack[64 * 1024] __attribute__((aligned(16)));

static char *at(uint64_t slot)
{
	return (char *)(slot << 30) + OBJ_NULLPAGE_SIZE;
}

static void on_object(int fault, void *info, void *ud)
{
	struct fault_object_info *o = info;
	printf("old slot unmapped: FAULT_OBJECT %#lx slot %#lx\n", (unsigned long)o->flags,
	  (unsigned long)(o->addr >> 30));
	fflush(stdout);
	_exit(0);
}

/* The new program: runs on `stack` with the registers BECOME gave it. */
static void entry(long a, long b)
{
	uint64_t lo, hi;
	uint32_t flags;
	twz_rt_view_get(SHARED_SLOT, &lo, &hi, &flags);
	printf("entry a=%ld b=%#lx shared=%s valid=%d\n", a, (unsigned long)b, at(SHARED_SLOT),
	  !!(flags & VE_VALID));
	twz_rt_view_get(OLD_SLOT, &lo, &hi, &flags);
	printf("old slot in the new view: %#x\n", flags);
	fflush(stdout);
	twz_fault_set(FAULT_OBJECT, on_object, NULL);
	printf("%d\n", at(OLD_SLOT)[0]);
	_exit(3);
}

static void thread_entry(long a)
{
	printf("thread became: a=%ld\n", a);
	fflush(stdout);
	_exit(0);
}

static void *become_from_thread(void *arg)
{
	struct sys_become_args args;
	memset(&args, 0, sizeof(args));
	args.target_rip = (uint64_t)(uintptr_t)thread_entry;
	args.rdi = (uint64_t)(uintptr_t)arg;
	args.rsp = (uint64_t)(uintptr_t)(stack + sizeof(stack) - 8);
	printf("BECOME returned %ld\n", twz_rt_become(&args));
	return NULL;
}

static objid_t object(const char *text)
{
	objid_t id;
	if(sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &id))
		_exit(2);
	return id;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if(argc > 1) {
		pthread_t t;
		pthread_create(&t, NULL, become_from_thread, (void *)7L);
		if(!strcmp(argv[1], "race"))
			_exit(5); /* the becoming thread dies with the process, maybe before it stops */
		pthread_join(t, NULL);
		return 1;
	}
	objid_t shared = object(NULL), old_only = object(NULL), view;
	twz_rt_view_set(SHARED_SLOT, ID_LO(shared), ID_HI(shared), VE_READ | VE_WRITE);
	twz_rt_view_set(OLD_SLOT, ID_LO(old_only), ID_HI(old_only), VE_READ | VE_WRITE);
	strcpy(at(SHARED_SLOT), "hello from the old view");
	strcpy(at(OLD_SLOT), "old");
	if(sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE | MIP_DFL_USE | (KSO_VIEW << OC_KSO_SHIFT),
	     &view))
		return 2;
	/* Build the new view through a slot of the old one: one entry, the shared object. */
	long vslot = twz_rt_slot_alloc(ID_LO(view), ID_HI(view), VE_READ | VE_WRITE);
	struct viewentry *ve = (struct viewentry *)(at(vslot) + VIEW_ENTRIES) + SHARED_SLOT;
	ve->id = shared;
	ve->flags = VE_READ | VE_WRITE | VE_VALID;

	struct sys_become_args bad;
	memset(&bad, 0, sizeof(bad));
	bad.target_view = shared; /* not a view */
	printf("not a view: %ld\n", twz_rt_become(&bad));
	bad.target_view = MKID(1, 2);
	printf("no such view: %ld, still here: %s\n", twz_rt_become(&bad), at(OLD_SLOT));
	printf("bad args: %ld\n", sys_become((void *)8, 0, 0));
	fflush(stdout);

	struct sys_become_args args;
	memset(&args, 0, sizeof(args));
	args.target_view = view;
	args.target_rip = (uint64_t)(uintptr_t)entry;
	args.rdi = 42;
	args.rsi = 0xfeed;
	args.rsp = (uint64_t)(uintptr_t)(stack + sizeof(stack) - 8); /* as after a call */
	long r = twz_rt_become(&args);
	printf("BECOME returned %ld\n", r);
	return 1;
}
