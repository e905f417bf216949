/* The floor for filling a lazy copy through userfaultfd: the same work twzd does, in C.
 *
 * The parent makes a source memfd with N pages of data and an empty copy memfd. The child maps
 * the copy MAP_SHARED, makes a userfaultfd, registers the mapping for MISSING faults and passes
 * the uffd to the parent (SCM_RIGHTS). The parent serves each fault as twzd does: it copies a
 * run of pages from the source into the copy's file (pread + pwrite) and wakes the faulting
 * thread with UFFDIO_WAKE; the child's retry and its next touches then find the pages in the
 * page cache. The run is 16 pages, doubled up to 256 while faults come in order (twzd's
 * readahead, kernel/cow.py). The child reads one byte of each page in order and prints the median
 * over ROUNDS rounds of the time per page, in microseconds; between rounds it punches the copy
 * empty again.
 *
 * usage: uffd_floor [N]        (build: gcc -O2 -o uffd_floor uffd_floor.c)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096L
#define RUN 16
#define RUN_MAX 256
#define ROUNDS 7

static void die(const char *what) { perror(what); exit(2); }

static void send_fd(int sock, int fd) {
    char byte = 'u', ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(sock, &m, 0) != 1) die("sendmsg");
}

static int recv_fd(int sock) {
    char byte, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) != 1) die("recvmsg");
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(int));
    return fd;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void child(int sock, int copy, long n) {
    char *map = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, copy, 0);
    if (map == MAP_FAILED) die("mmap");
    int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_MISSING_SHMEM};
    if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");
    struct uffdio_register reg = {.range = {(uintptr_t)map, n * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
    send_fd(sock, uffd);
    if (write(sock, &map, sizeof map) != sizeof map) die("write");
    close(uffd);
    double per_page[ROUNDS];
    volatile char sink = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_us();
        for (long i = 0; i < n; i++) sink += map[i * PAGE];
        per_page[r] = (now_us() - t0) / n;
        if (fallocate(copy, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, n * PAGE)) die("punch");
    }
    (void)sink;
    qsort(per_page, ROUNDS, sizeof(double), cmp);
    printf("median_us_per_page %.3f\n", per_page[ROUNDS / 2]);
    fflush(stdout);
}

/* Until the child hangs up its socket (it has exited). */
static void serve(int sock, int uffd, uint64_t base, int src, int copy, long n) {
    static char buf[RUN_MAX * PAGE];
    long expected = -1, run = 0;
    struct pollfd p[2] = {{.fd = uffd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (p[1].revents) return;
        struct uffd_msg msgs[64];
        ssize_t got = read(uffd, msgs, sizeof msgs);
        if (got <= 0) {
            if (got < 0 && errno == EAGAIN) continue;
            return;
        }
        for (ssize_t i = 0; i < got / (ssize_t)sizeof msgs[0]; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
            uint64_t addr = msgs[i].arg.pagefault.address & ~(uint64_t)(PAGE - 1);
            long off = (long)(addr - base);
            run = off == expected ? (run * 2 > RUN_MAX ? RUN_MAX : run * 2) : RUN;
            long len = run * PAGE;
            if (off + len > n * PAGE) len = n * PAGE - off;
            if (pread(src, buf, len, off) != len || pwrite(copy, buf, len, off) != len) die("fill");
            expected = off + len;
            struct uffdio_range wake = {.start = addr, .len = PAGE};
            ioctl(uffd, UFFDIO_WAKE, &wake);
        }
    }
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 16384;
    int src = memfd_create("src", 0), copy = memfd_create("copy", 0);
    if (src < 0 || copy < 0 || ftruncate(src, n * PAGE) || ftruncate(copy, n * PAGE)) die("memfd");
    char *page = malloc(PAGE);
    for (long i = 0; i < n; i++) {
        memset(page, (int)(i & 0xff), PAGE);
        if (pwrite(src, page, PAGE, i * PAGE) != PAGE) die("fill source");
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        child(sv[1], copy, n);
        _exit(0);
    }
    close(sv[1]);
    int uffd = recv_fd(sv[0]);
    uint64_t base;
    if (read(sv[0], &base, sizeof base) != sizeof base) die("read");
    serve(sv[0], uffd, base, src, copy, n);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
}
