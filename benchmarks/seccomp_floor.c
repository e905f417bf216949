/* The floor for a trapped Twizzler syscall: a C seccomp user-notification supervisor.
 *
 * The child installs a filter that sends nr in [0x1000,0x2000) to SECCOMP_RET_USER_NOTIF
 * (NO_NEW_PRIVS + SECCOMP_FILTER_FLAG_NEW_LISTENER), passes the listener to the parent over a
 * socketpair (SCM_RIGHTS) and closes its copy. The parent sets SYNC_WAKE_UP and loops
 * RECV/SEND, answering 0. The child times N calls of syscall(0x1000) one by one and prints the
 * median per call in microseconds; syscall(0x1001) then tells the parent to stop.
 *
 * usage: seccomp_floor [N]        (build: gcc -O2 -o seccomp_floor seccomp_floor.c)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS /* 6.6+; Debian 12's headers lack it */
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

#define NR_BENCH 0x1000
#define NR_STOP 0x1001
#define WARMUP 1000

static void die(const char *what) { perror(what); exit(2); }

static int install_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x1000, 0, 2),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x2000, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("PR_SET_NO_NEW_PRIVS");
    int fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0) die("seccomp(NEW_LISTENER)");
    return fd;
}

static void send_fd(int sock, int fd) {
    char byte = 0, ctl[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) != 1) die("sendmsg");
}

static int recv_fd(int sock) {
    char byte, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) != 1) die("recvmsg");
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS) { fprintf(stderr, "no fd received\n"); exit(2); }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int child(int sock, long n) {
    int listener = install_filter();
    send_fd(sock, listener);
    close(listener);
    uint64_t *t = malloc(n * sizeof *t);
    if (!t) die("malloc");
    for (long i = 0; i < WARMUP; i++)
        if (syscall(NR_BENCH, 0) != 0) die("syscall(0x1000) during warm-up");
    for (long i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        long r = syscall(NR_BENCH, 0);
        t[i] = now_ns() - t0;
        if (r != 0) die("syscall(0x1000)");
    }
    syscall(NR_STOP, 0);
    qsort(t, n, sizeof *t, cmp_u64);
    printf("%.3f\n", (n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2.0) / 1000.0);
    return 0;
}

static long supervise(int listener) {
    long served = 0;
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP))
        perror("note: SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP unavailable"); /* pre-6.6 kernel */
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    for (;;) {
        memset(&req, 0, sizeof req); /* RECV fails with EINVAL on a dirty buffer */
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req)) {
            if (errno == EINTR) continue;
            die("SECCOMP_IOCTL_NOTIF_RECV");
        }
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) && errno != ENOENT)
            die("SECCOMP_IOCTL_NOTIF_SEND");
        served++;
        if (req.data.nr == NR_STOP) return served;
    }
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    if (n < 1) { fprintf(stderr, "usage: %s [N>0]\n", argv[0]); return 2; }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        return child(sv[1], n);
    }
    close(sv[1]);
    int listener = recv_fd(sv[0]);
    long served = supervise(listener);
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    if (!WIFEXITED(status)) return 128 + WTERMSIG(status);
    if (WEXITSTATUS(status)) return WEXITSTATUS(status);
    if (served != WARMUP + n + 1) { /* every timed call must have gone through the supervisor */
        fprintf(stderr, "supervisor served %ld calls, expected %ld\n", served, WARMUP + n + 1);
        return 3;
    }
    return 0;
}
