/* TCP/UDP connections over IPv4 and IPv6, from syscall tracepoints only (no kprobe needed). See
 * bpf/README.md. The fd a syscall names is resolved to its socket through the task's fd table
 * (task->files->fdt->fd[fd] -> file, a socket inode, file->private_data -> struct socket -> sk)
 * and the addresses are read from sk's sock_common. Sockets of other families are ignored.
 *
 *   connect  sys_enter_connect stashes the fd per thread; sys_exit_connect emits when the call
 *            succeeded or is in progress (ret 0 / -EINPROGRESS)   group connect__tp_{enter,exit}
 *   accept   sys_enter_accept(4) stashes the listening fd; sys_exit_accept(4) emits for the new
 *            fd (ret)                        groups accept__tp_{enter,exit}, accept4__tp_{enter,exit}
 *   close    sys_enter_close, when the fd is an IPv4/IPv6 socket        group close__tp
 * Fields: fd, family, protocol (IPPROTO_TCP/UDP/...), sport, dport (host byte order), saddr,
 * daddr (16 bytes; IPv4 in the first 4), in network byte order.
 */
#include "include/hids_asm_goto.h"
#include "include/hids_kernel.h"
#include "include/hids_helpers.h"
#include "include/hids_events.h"
#include "include/hids_emit.h"
#include "include/hids_syscall.h"

/* fd named at syscall entry, per thread, until the syscall's exit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, __s32);
} pending_fd SEC(".maps");

struct hids_sock_tuple {
	__u16 family;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* The socket behind `fd` of the current task, or NULL when fd is no socket. */
static __always_inline struct sock *hids_fd_sock(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = NULL;
	struct fdtable *fdt = NULL;
	struct file **fds = NULL;
	struct file *file = NULL;
	struct inode *inode = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;
	unsigned int max_fds = 0;
	__u16 mode = 0;

	if (fd < 0)
		return NULL;
	if (bpf_probe_read_kernel(&files, sizeof(files), &task->files) || !files ||
	    bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt) || !fdt ||
	    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), &fdt->max_fds) || (unsigned int)fd >= max_fds ||
	    bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd) || !fds ||
	    bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file ||
	    bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode) || !inode ||
	    bpf_probe_read_kernel(&mode, sizeof(mode), &inode->i_mode) || !S_ISSOCK(mode) ||
	    bpf_probe_read_kernel(&sock, sizeof(sock), &file->private_data) || !sock ||
	    bpf_probe_read_kernel(&sk, sizeof(sk), &sock->sk))
		return NULL;
	return sk;
}

/* Returns 0 for an IPv4/IPv6 socket with `t` filled, -1 otherwise. */
static __always_inline int hids_read_tuple(struct sock *sk, struct hids_sock_tuple *t)
{
	__u16 dport_be = 0;

	if (!sk || bpf_probe_read_kernel(&t->family, sizeof(t->family), &sk->__sk_common.skc_family))
		return -1;
	if (t->family != AF_INET && t->family != AF_INET6)
		return -1;
	bpf_probe_read_kernel(&t->protocol, sizeof(t->protocol), &sk->sk_protocol);
	bpf_probe_read_kernel(&t->sport, sizeof(t->sport), &sk->__sk_common.skc_num);
	bpf_probe_read_kernel(&dport_be, sizeof(dport_be), &sk->__sk_common.skc_dport);
	/* skc_dport is big-endian; both target arches are little-endian. */
	t->dport = __builtin_bswap16(dport_be);
	if (t->family == AF_INET) {
		bpf_probe_read_kernel(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	return 0;
}

#define HIDS_COPY_TUPLE(ev, t)                                                      \
	do {                                                                        \
		(ev)->family = (t).family;                                          \
		(ev)->protocol = (t).protocol;                                      \
		(ev)->sport = (t).sport;                                            \
		(ev)->dport = (t).dport;                                            \
		__builtin_memcpy((ev)->saddr, (t).saddr, 16);                       \
		__builtin_memcpy((ev)->daddr, (t).daddr, 16);                       \
	} while (0)

static __always_inline void hids_stash_fd(int fd)
{
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_update_elem(&pending_fd, &id, &fd, BPF_ANY);
}

/* Takes the fd stashed at entry; -1 when entry was not seen. */
static __always_inline int hids_take_fd(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__s32 *stashed = bpf_map_lookup_elem(&pending_fd, &id);
	int fd;

	if (!stashed)
		return -1;
	fd = *stashed;
	bpf_map_delete_elem(&pending_fd, &id);
	return fd;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int connect__tp_enter(struct hids_sys_enter_ctx *ctx)
{
	hids_stash_fd((int)ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int connect__tp_exit(struct hids_sys_exit_ctx *ctx)
{
	struct hids_sock_tuple t = {};
	struct hids_ev_connect *ev;
	long ret = ctx->ret;
	int fd = hids_take_fd();

	if (fd < 0 || (ret != 0 && ret != -EINPROGRESS))
		return 0;
	if (hids_read_tuple(hids_fd_sock(fd), &t))
		return 0;
	ev = hids_event_begin(HIDS_EV_CONNECT);
	if (!ev)
		return 0;
	ev->fd = fd;
	ev->ret = ret;
	HIDS_COPY_TUPLE(ev, t);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_accept_exit(struct hids_sys_exit_ctx *ctx)
{
	struct hids_sock_tuple t = {};
	struct hids_ev_accept *ev;
	long ret = ctx->ret;
	int listen_fd = hids_take_fd();

	if (ret < 0 || hids_read_tuple(hids_fd_sock(ret), &t))
		return 0;
	ev = hids_event_begin(HIDS_EV_ACCEPT);
	if (!ev)
		return 0;
	ev->fd = ret;
	ev->listen_fd = listen_fd;
	HIDS_COPY_TUPLE(ev, t);
	return HIDS_EMIT(ctx, ev);
}

SEC("tracepoint/syscalls/sys_enter_accept")
int accept__tp_enter(struct hids_sys_enter_ctx *ctx)
{
	hids_stash_fd((int)ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept__tp_exit(struct hids_sys_exit_ctx *ctx)
{
	return on_accept_exit(ctx);
}

SEC("tracepoint/syscalls/sys_enter_accept4")
int accept4__tp_enter(struct hids_sys_enter_ctx *ctx)
{
	hids_stash_fd((int)ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4__tp_exit(struct hids_sys_exit_ctx *ctx)
{
	return on_accept_exit(ctx);
}

SEC("tracepoint/syscalls/sys_enter_close")
int close__tp(struct hids_sys_enter_ctx *ctx)
{
	struct hids_sock_tuple t = {};
	struct hids_ev_close *ev;
	int fd = (int)ctx->args[0];

	if (hids_read_tuple(hids_fd_sock(fd), &t))
		return 0;
	ev = hids_event_begin(HIDS_EV_CLOSE);
	if (!ev)
		return 0;
	ev->fd = fd;
	ev->reserved = 0;
	HIDS_COPY_TUPLE(ev, t);
	return HIDS_EMIT(ctx, ev);
}
