/* Kernel-facing activity: module loads, bpf(), ptrace, mounts, OOM kills. See bpf/README.md.
 *
 *   module_load <- init_module, finit_module   groups `<syscall>__kprobe` | `<syscall>__tp`
 *                  (fd or -1, flags, image length, module parameters)
 *   bpf         <- bpf                          (cmd, attr size)
 *   ptrace      <- ptrace                       (request, target pid, addr)
 *   mount       <- mount                        (source, target, fstype, flags)
 *   umount      <- umount (umount2(2))          (target, flags)
 *   oom_kill    tracepoint/oom/mark_victim      (victim pid; the header is the task that ran
 *                                                the OOM killer)
 */
#include "include/hids_asm_goto.h"
#include "include/hids_kernel.h"
#include "include/hids_helpers.h"
#include "include/hids_events.h"
#include "include/hids_emit.h"
#include "include/hids_syscall.h"

static __always_inline int emit_module_load(void *ctx, int fd, __u64 len, const void *uargs, __u32 flags)
{
	struct hids_ev_module_load *ev = hids_event_begin(HIDS_EV_MODULE_LOAD);

	if (!ev)
		return 0;
	ev->fd = fd;
	ev->module_flags = flags;
	ev->len = len;
	HIDS_READ_USER_STR(ev->args, uargs, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

/* init_module(image, len, uargs) */
static __always_inline int on_init_module(void *ctx, const struct hids_syscall_args *a)
{
	return emit_module_load(ctx, -1, a->a[1], HIDS_ARG_PTR(a, 2), 0);
}

/* finit_module(fd, uargs, flags) */
static __always_inline int on_finit_module(void *ctx, const struct hids_syscall_args *a)
{
	return emit_module_load(ctx, HIDS_ARG_INT(a, 0), 0, HIDS_ARG_PTR(a, 1), a->a[2]);
}

static __always_inline int on_bpf(void *ctx, const struct hids_syscall_args *a)
{
	struct hids_ev_bpf *ev = hids_event_begin(HIDS_EV_BPF);

	if (!ev)
		return 0;
	ev->cmd = HIDS_ARG_INT(a, 0);
	ev->attr_size = a->a[2];
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_ptrace(void *ctx, const struct hids_syscall_args *a)
{
	struct hids_ev_ptrace *ev = hids_event_begin(HIDS_EV_PTRACE);

	if (!ev)
		return 0;
	ev->request = (long)a->a[0];
	ev->target_pid = a->a[1];
	ev->reserved = 0;
	ev->addr = a->a[2];
	return HIDS_EMIT(ctx, ev);
}

/* mount(source, target, fstype, flags, data) */
static __always_inline int on_mount(void *ctx, const struct hids_syscall_args *a)
{
	struct hids_ev_mount *ev = hids_event_begin(HIDS_EV_MOUNT);

	if (!ev)
		return 0;
	ev->mount_flags = a->a[3];
	HIDS_READ_USER_STR(ev->source, HIDS_ARG_PTR(a, 0), &ev->hdr);
	HIDS_READ_USER_STR(ev->target, HIDS_ARG_PTR(a, 1), &ev->hdr);
	HIDS_READ_USER_STR(ev->fstype, HIDS_ARG_PTR(a, 2), &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_umount(void *ctx, const struct hids_syscall_args *a)
{
	struct hids_ev_umount *ev = hids_event_begin(HIDS_EV_UMOUNT);

	if (!ev)
		return 0;
	ev->umount_flags = HIDS_ARG_INT(a, 1);
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->target, HIDS_ARG_PTR(a, 0), &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

HIDS_SYSCALL_PROBES(init_module, on_init_module)
HIDS_SYSCALL_PROBES(finit_module, on_finit_module)
HIDS_SYSCALL_PROBES(bpf, on_bpf)
HIDS_SYSCALL_PROBES(ptrace, on_ptrace)
HIDS_SYSCALL_PROBES(mount, on_mount)
HIDS_SYSCALL_PROBES(umount, on_umount)

/* tracepoint/oom/mark_victim: 8 bytes of common fields, then the victim's pid. */
struct hids_mark_victim_ctx {
	__u64 common;
	int pid;
};

SEC("tracepoint/oom/mark_victim")
int oom_kill__tp(struct hids_mark_victim_ctx *ctx)
{
	struct hids_ev_oom_kill *ev = hids_event_begin(HIDS_EV_OOM_KILL);

	if (!ev)
		return 0;
	ev->victim_pid = ctx->pid;
	ev->reserved = 0;
	return HIDS_EMIT(ctx, ev);
}
