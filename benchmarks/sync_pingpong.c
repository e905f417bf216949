/* thread_sync ping-pong between two processes, in C; prints {"median_us": ...}.
 *
 * usage: sync_pingpong twz|futex [N]
 *   twz    under twzrun: the word is in a Twizzler object, both sides use twz_thread_sync
 *          (twz/thread.h: the runtime's in-process THRD_SYNC)
 *   futex  the floor, outside twzd: the word is in a MAP_SHARED memfd, raw FUTEX_WAIT/WAKE
 * The partner is a fork() of the caller in both. */
#define TWZ_RT_IMPLEMENTATION
#include <twz/rt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static uint64_t *word;
static int use_twz;

static void wake(void)
{
	if(use_twz)
		twz_thread_sync(THREAD_SYNC_WAKE, word, 1, NULL);
	else
		syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void wait_for(uint64_t value)
{
	for(;;) {
		uint64_t v = __atomic_load_n(word, __ATOMIC_ACQUIRE);
		if(v == value)
			return;
		if(use_twz)
			twz_thread_sync(THREAD_SYNC_SLEEP, word, v, NULL);
		else
			syscall(SYS_futex, word, FUTEX_WAIT, (uint32_t)v, NULL, NULL, 0);
	}
}

static int cmp(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if(argc < 2 || (strcmp(argv[1], "twz") && strcmp(argv[1], "futex"))) {
		fprintf(stderr, "usage: sync_pingpong twz|futex [N]\n");
		return 2;
	}
	use_twz = !strcmp(argv[1], "twz");
	long n = argc > 2 ? atol(argv[2]) : 10000;
	if(use_twz) {
		objid_t id;
		long r = sys_ocreate(0, 0, MIP_DFL_READ | MIP_DFL_WRITE, &id);
		long slot = r < 0 ? r : twz_rt_slot_alloc(ID_LO(id), ID_HI(id), VE_READ | VE_WRITE);
		if(slot < 0) {
			fprintf(stderr, "cannot make the object: %ld\n", slot);
			return 1;
		}
		word = (uint64_t *)((uint64_t)slot << 30 | OBJ_NULLPAGE_SIZE);
	} else {
		int fd = memfd_create("pingpong", 0);
		if(fd < 0 || ftruncate(fd, 4096) < 0)
			return 1;
		word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	}
	*word = 0; /* touched before the fork: the child inherits the mapping */
	long *times = malloc(sizeof(long) * (size_t)n);
	fflush(NULL);
	int pid = fork();
	if(pid == 0) {
		for(long i = 0; i < n; i++) {
			wait_for(2 * (uint64_t)i + 1);
			__atomic_store_n(word, 2 * (uint64_t)i + 2, __ATOMIC_RELEASE);
			wake();
		}
		_exit(0);
	}
	for(long i = 0; i < n; i++) {
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		__atomic_store_n(word, 2 * (uint64_t)i + 1, __ATOMIC_RELEASE);
		wake();
		wait_for(2 * (uint64_t)i + 2);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		times[i] = (t1.tv_sec - t0.tv_sec) * 1000000000L + t1.tv_nsec - t0.tv_nsec;
	}
	waitpid(pid, NULL, 0);
	qsort(times + n / 10, (size_t)(n - n / 10), sizeof(long), cmp);
	printf("{\"median_us\": %.3f, \"n\": %ld}\n", times[n / 10 + (n - n / 10) / 2] / 1000.0, n);
	return 0;
}
