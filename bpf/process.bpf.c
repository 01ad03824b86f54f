/* Process lifecycle and credential changes. See bpf/README.md.
 *
 *   exec   raw_tracepoint/sched_process_exec (task, old_pid, bprm): filename from bprm, argc from
 *          bprm, argv copied from the new mm's arg_start..arg_end (NUL-separated, cut at
 *          HIDS_ARGV_MAX - 1 bytes with HIDS_F_TRUNCATED)
 *   fork   raw_tracepoint/sched_process_fork (parent, child): new processes only (child
 *          pid == tgid), not new threads; the header is the parent's
 *   exit   raw_tracepoint/sched_process_exit: when a thread-group leader exits, with exit_code
 *   setuid <- setuid, setreuid, setresuid   groups `<syscall>__kprobe` | `<syscall>__tp`:
 *   setgid <- setgid, setregid, setresgid   the requested ids, -1 where the call leaves one
 *   capset <- capset                        target pid, version, requested capability sets
 */
#include "include/hids_asm_goto.h"
#include "include/hids_kernel.h"
#include "include/hids_helpers.h"
#include "include/hids_events.h"
#include "include/hids_emit.h"
#include "include/hids_syscall.h"

SEC("raw_tracepoint/sched_process_exec")
int exec__raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct hids_ev_exec *ev = hids_event_begin(HIDS_EV_EXEC);
	struct mm_struct *mm = NULL;
	unsigned long arg_start = 0, arg_end = 0, len;
	const char *filename = NULL;
	int argc = 0;
	char next = 0;
	long n;

	if (!ev)
		return 0;
	bpf_probe_read_kernel(&filename, sizeof(filename), &bprm->filename);
	n = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), filename);
	if (n < 0) {
		ev->filename[0] = 0;
		ev->hdr.flags |= HIDS_F_READ_FAILED;
	} else if (n == sizeof(ev->filename) &&
		   bpf_probe_read_kernel(&next, 1, filename + sizeof(ev->filename) - 1) == 0 && next) {
		ev->hdr.flags |= HIDS_F_TRUNCATED;
	}
	bpf_probe_read_kernel(&argc, sizeof(argc), &bprm->argc);
	ev->argc = argc;

	ev->argv_len = 0;
	ev->argv[0] = 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), &task->mm);
	if (!mm || bpf_probe_read_kernel(&arg_start, sizeof(arg_start), &mm->arg_start) ||
	    bpf_probe_read_kernel(&arg_end, sizeof(arg_end), &mm->arg_end)) {
		ev->hdr.flags |= HIDS_F_READ_FAILED;
		return HIDS_EMIT(ctx, ev);
	}
	len = arg_end - arg_start;
	if (arg_end < arg_start)
		len = 0;
	if (len >= HIDS_ARGV_MAX) {
		len = HIDS_ARGV_MAX - 1;
		ev->hdr.flags |= HIDS_F_TRUNCATED;
	}
	/* The mask restates the bound for the verifier; the last byte stays a terminator. */
	len &= HIDS_ARGV_MAX - 1;
	if (len && bpf_probe_read_user(ev->argv, len, (const void *)arg_start) == 0) {
		ev->argv_len = len;
		ev->argv[HIDS_ARGV_MAX - 1] = 0;
	} else if (len) {
		ev->argv[0] = 0;
		ev->hdr.flags |= HIDS_F_READ_FAILED;
	}
	return HIDS_EMIT(ctx, ev);
}

SEC("raw_tracepoint/sched_process_fork")
int fork__raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct hids_ev_fork *ev;
	__u32 pid = 0, tgid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), &child->pid);
	bpf_probe_read_kernel(&tgid, sizeof(tgid), &child->tgid);
	if (pid != tgid)
		return 0;
	ev = hids_event_begin(HIDS_EV_FORK);
	if (!ev)
		return 0;
	ev->child_pid = pid;
	ev->child_tgid = tgid;
	return HIDS_EMIT(ctx, ev);
}

SEC("raw_tracepoint/sched_process_exit")
int exit__raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct hids_ev_exit *ev;
	int code = 0;

	if ((__u32)pid_tgid != pid_tgid >> 32)
		return 0;
	ev = hids_event_begin(HIDS_EV_EXIT);
	if (!ev)
		return 0;
	if (bpf_probe_read_kernel(&code, sizeof(code), &task->exit_code))
		ev->hdr.flags |= HIDS_F_READ_FAILED;
	ev->exit_code = code;
	ev->reserved = 0;
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int emit_setuid(void *ctx, int ruid, int euid, int suid)
{
	struct hids_ev_setuid *ev = hids_event_begin(HIDS_EV_SETUID);

	if (!ev)
		return 0;
	ev->ruid = ruid;
	ev->euid = euid;
	ev->suid = suid;
	ev->reserved = 0;
	return HIDS_EMIT(ctx, ev);
}

/* setuid(2) names one id; the kernel applies it to all three when privileged, else to euid. */
static __always_inline int on_setuid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setuid(ctx, -1, HIDS_ARG_INT(a, 0), -1);
}

static __always_inline int on_setreuid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setuid(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_INT(a, 1), -1);
}

static __always_inline int on_setresuid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setuid(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_INT(a, 1), HIDS_ARG_INT(a, 2));
}

static __always_inline int emit_setgid(void *ctx, int rgid, int egid, int sgid)
{
	struct hids_ev_setgid *ev = hids_event_begin(HIDS_EV_SETGID);

	if (!ev)
		return 0;
	ev->rgid = rgid;
	ev->egid = egid;
	ev->sgid = sgid;
	ev->reserved = 0;
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_setgid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setgid(ctx, -1, HIDS_ARG_INT(a, 0), -1);
}

static __always_inline int on_setregid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setgid(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_INT(a, 1), -1);
}

static __always_inline int on_setresgid(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setgid(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_INT(a, 1), HIDS_ARG_INT(a, 2));
}

/* capset(header, data): data holds two 32-bit words per set for versions 2 and 3. */
static __always_inline int on_capset(void *ctx, const struct hids_syscall_args *a)
{
	const struct __user_cap_header_struct *uhdr = HIDS_ARG_PTR(a, 0);
	const struct __user_cap_data_struct *udata = HIDS_ARG_PTR(a, 1);
	struct __user_cap_header_struct h = {};
	struct __user_cap_data_struct d[2] = {};
	struct hids_ev_capset *ev = hids_event_begin(HIDS_EV_CAPSET);

	if (!ev)
		return 0;
	if (bpf_probe_read_user(&h, sizeof(h), uhdr) || bpf_probe_read_user(&d[0], sizeof(d[0]), &udata[0]))
		ev->hdr.flags |= HIDS_F_READ_FAILED;
	/* Version 1 callers pass a single word: a failed second read is not an error. */
	bpf_probe_read_user(&d[1], sizeof(d[1]), &udata[1]);
	ev->target_pid = h.pid;
	ev->version = h.version;
	ev->effective = (__u64)d[1].effective << 32 | d[0].effective;
	ev->permitted = (__u64)d[1].permitted << 32 | d[0].permitted;
	ev->inheritable = (__u64)d[1].inheritable << 32 | d[0].inheritable;
	return HIDS_EMIT(ctx, ev);
}

HIDS_SYSCALL_PROBES(setuid, on_setuid)
HIDS_SYSCALL_PROBES(setreuid, on_setreuid)
HIDS_SYSCALL_PROBES(setresuid, on_setresuid)
HIDS_SYSCALL_PROBES(setgid, on_setgid)
HIDS_SYSCALL_PROBES(setregid, on_setregid)
HIDS_SYSCALL_PROBES(setresgid, on_setresgid)
HIDS_SYSCALL_PROBES(capset, on_capset)
