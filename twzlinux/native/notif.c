/* twzd's side of seccomp user notification: one C call per ioctl, built as twzlinux._twznotif.
 *
 * Every trapped call crosses RECV and SEND; through fcntl.ioctl, select.poll and struct each
 * costs buffers, tuples and copies, a good part of a null call's time in twzd. Here a call
 * is a plain function taking and returning integers. Errors come back as -errno, never set.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS /* 6.6+; the 6.1 headers lack it */
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

#define TWZ_NOTIF_NONE 0
#define TWZ_NOTIF_READY 1
#define TWZ_NOTIF_HUP 2

/* Wake the caller on the CPU twzd answers from. 0 or -errno (pre-6.6 kernels: -EINVAL). */
int twz_notif_set_sync_wakeup(int fd)
{
    return ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) ? -errno : 0;
}

/* Take one pending notification without blocking: RECV waits when nothing is pending, which
 * would freeze twzd's loop, so it is issued only after poll says one is there. On READY, out
 * holds id, tid, nr, then the six argument registers. NONE: nothing pending, or its caller was
 * killed before the RECV. HUP: every process that could trap through the filter is gone. */
int twz_notif_recv(int fd, uint64_t out[9])
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) < 0)
        return errno == EINTR ? TWZ_NOTIF_NONE : -errno;
    if (!(p.revents & POLLIN))
        return p.revents & (POLLHUP | POLLERR | POLLNVAL) ? TWZ_NOTIF_HUP : TWZ_NOTIF_NONE;
    struct seccomp_notif n;
    memset(&n, 0, sizeof n); /* RECV fails with EINVAL on a dirty buffer */
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &n))
        return errno == ENOENT || errno == EAGAIN || errno == EINTR ? TWZ_NOTIF_NONE : -errno;
    out[0] = n.id;
    out[1] = n.pid;
    /* The filter sends only numbers in [0x1000, 0x2000) and refused Linux calls, never a
     * negative one, so the unsigned value is the number. */
    out[2] = (uint32_t)n.data.nr;
    for (int i = 0; i < 6; i++)
        out[3 + i] = n.data.args[i];
    return TWZ_NOTIF_READY;
}

/* Answer notification id with rax = value (a u64; -4095..-1 as a signed value is -errno).
 * 0 or -errno; -ENOENT: the caller has gone. */
int twz_notif_send(int fd, uint64_t id, uint64_t value)
{
    struct seccomp_notif_resp r;
    memset(&r, 0, sizeof r);
    r.id = id;
    int64_t v = (int64_t)value;
    if (v < 0 && v >= -4095)
        r.error = (int32_t)v;
    else
        r.val = v;
    return ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &r) ? -errno : 0;
}

/* 1 while notification id is pending (its caller alive and waiting), 0 once it is not. */
int twz_notif_id_valid(int fd, uint64_t id)
{
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

/* Install srcfd (close-on-exec) in the caller and answer id with its number in one step.
 * The caller's fd number, or -errno (-ENOENT: the caller has gone). */
int twz_notif_addfd_send(int fd, uint64_t id, int srcfd)
{
    struct seccomp_notif_addfd a;
    memset(&a, 0, sizeof a);
    a.id = id;
    a.flags = SECCOMP_ADDFD_FLAG_SEND;
    a.srcfd = (uint32_t)srcfd;
    a.newfd_flags = O_CLOEXEC;
    int r = ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, &a);
    return r < 0 ? -errno : r;
}
