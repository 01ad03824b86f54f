/* File activity: one event per syscall entry, with the path as the caller passed it (relative
 * paths are relative to dfd; the agent resolves them against /proc). See bpf/README.md.
 *
 * Groups (one per syscall, `<syscall>__kprobe` | `<syscall>__tp`, tracepoint
 * syscalls/sys_enter_<syscall>); x86-only legacy syscalls exist only in x86 objects:
 *   chmod      <- fchmodat, fchmod, chmod(x86)           (dfd, mode, path)
 *   chown      <- fchownat, fchown, chown/lchown(x86)    (dfd, uid, gid, at_flags, path)
 *   open       <- group `open`: kprobe do_sys_openat2 (>= 5.6, else do_sys_open), or the
 *                 tracepoints of openat, openat2, open(x86) (dfd, open_flags, mode, path)
 *   mkdir      <- mkdirat, mkdir(x86)                    (dfd, mode, path)
 *   rmdir      <- unlinkat with AT_REMOVEDIR, rmdir(x86) (dfd, path)
 *   unlink     <- unlinkat, unlink(x86)                  (dfd, at_flags, path)
 *   rename     <- renameat, renameat2, rename(x86)       (olddfd, newdfd, flags, oldpath, newpath)
 *   utimes     <- utimensat, utime/utimes/futimesat(x86) (dfd, at_flags, path)
 *   link       <- linkat, link(x86)                      (olddfd, newdfd, at_flags, oldpath, newpath)
 *   setxattr   <- setxattr, lsetxattr, fsetxattr         (fd, flags, size, name, path)
 *   removexattr<- removexattr, lremovexattr, fremovexattr(fd, name, path)
 */
#include "include/hids_asm_goto.h"
#include "include/hids_kernel.h"
#include "include/hids_helpers.h"
#include "include/hids_events.h"
#include "include/hids_emit.h"
#include "include/hids_syscall.h"

static __always_inline int emit_chmod(void *ctx, int dfd, const void *path, __u32 mode)
{
	struct hids_ev_chmod *ev = hids_event_begin(HIDS_EV_CHMOD);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->mode = mode;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_fchmodat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chmod(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), a->a[2]);
}

static __always_inline int on_fchmod(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chmod(ctx, HIDS_ARG_INT(a, 0), NULL, a->a[1]);
}

static __always_inline int emit_chown(void *ctx, int dfd, const void *path, int uid, int gid, int at_flags)
{
	struct hids_ev_chown *ev = hids_event_begin(HIDS_EV_CHOWN);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->uid = uid;
	ev->gid = gid;
	ev->at_flags = at_flags;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_fchownat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chown(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), HIDS_ARG_INT(a, 2),
			  HIDS_ARG_INT(a, 3), HIDS_ARG_INT(a, 4));
}

static __always_inline int on_fchown(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chown(ctx, HIDS_ARG_INT(a, 0), NULL, HIDS_ARG_INT(a, 1), HIDS_ARG_INT(a, 2), 0);
}

static __always_inline int emit_open(void *ctx, int dfd, const void *path, int flags, __u32 mode)
{
	struct hids_ev_open *ev = hids_event_begin(HIDS_EV_OPEN);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->open_flags = flags;
	ev->mode = mode;
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int emit_mkdir(void *ctx, int dfd, const void *path, __u32 mode)
{
	struct hids_ev_mkdir *ev = hids_event_begin(HIDS_EV_MKDIR);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->mode = mode;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_mkdirat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_mkdir(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), a->a[2]);
}

static __always_inline int emit_rmdir(void *ctx, int dfd, const void *path)
{
	struct hids_ev_rmdir *ev = hids_event_begin(HIDS_EV_RMDIR);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int emit_unlink(void *ctx, int dfd, const void *path, int at_flags)
{
	struct hids_ev_unlink *ev = hids_event_begin(HIDS_EV_UNLINK);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->at_flags = at_flags;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

/* unlinkat(2) removes directories too: those are rmdir events. */
static __always_inline int on_unlinkat(void *ctx, const struct hids_syscall_args *a)
{
	int at_flags = HIDS_ARG_INT(a, 2);

	if (at_flags & AT_REMOVEDIR)
		return emit_rmdir(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1));
	return emit_unlink(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), at_flags);
}

static __always_inline int emit_rename(void *ctx, int olddfd, const void *oldpath, int newdfd,
				       const void *newpath, __u32 flags)
{
	struct hids_ev_rename *ev = hids_event_begin(HIDS_EV_RENAME);

	if (!ev)
		return 0;
	ev->olddfd = olddfd;
	ev->newdfd = newdfd;
	ev->rename_flags = flags;
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->oldpath, oldpath, &ev->hdr);
	HIDS_READ_USER_STR(ev->newpath, newpath, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_renameat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_rename(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), HIDS_ARG_INT(a, 2), HIDS_ARG_PTR(a, 3), 0);
}

static __always_inline int on_renameat2(void *ctx, const struct hids_syscall_args *a)
{
	return emit_rename(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), HIDS_ARG_INT(a, 2), HIDS_ARG_PTR(a, 3),
			   a->a[4]);
}

static __always_inline int emit_utimes(void *ctx, int dfd, const void *path, int at_flags)
{
	struct hids_ev_utimes *ev = hids_event_begin(HIDS_EV_UTIMES);

	if (!ev)
		return 0;
	ev->dfd = dfd;
	ev->at_flags = at_flags;
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_utimensat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_utimes(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), HIDS_ARG_INT(a, 3));
}

static __always_inline int emit_link(void *ctx, int olddfd, const void *oldpath, int newdfd,
				     const void *newpath, int at_flags)
{
	struct hids_ev_link *ev = hids_event_begin(HIDS_EV_LINK);

	if (!ev)
		return 0;
	ev->olddfd = olddfd;
	ev->newdfd = newdfd;
	ev->at_flags = at_flags;
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->oldpath, oldpath, &ev->hdr);
	HIDS_READ_USER_STR(ev->newpath, newpath, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

static __always_inline int on_linkat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_link(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), HIDS_ARG_INT(a, 2), HIDS_ARG_PTR(a, 3),
			 HIDS_ARG_INT(a, 4));
}

static __always_inline int emit_setxattr(void *ctx, int fd, const void *path, const void *name, __u64 size,
					 __u32 flags)
{
	struct hids_ev_setxattr *ev = hids_event_begin(HIDS_EV_SETXATTR);

	if (!ev)
		return 0;
	ev->fd = fd;
	ev->xattr_flags = flags;
	ev->size = size;
	HIDS_READ_USER_STR(ev->name, name, &ev->hdr);
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

/* setxattr, lsetxattr: (path, name, value, size, flags) */
static __always_inline int on_setxattr(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setxattr(ctx, -1, HIDS_ARG_PTR(a, 0), HIDS_ARG_PTR(a, 1), a->a[3], a->a[4]);
}

static __always_inline int on_fsetxattr(void *ctx, const struct hids_syscall_args *a)
{
	return emit_setxattr(ctx, HIDS_ARG_INT(a, 0), NULL, HIDS_ARG_PTR(a, 1), a->a[3], a->a[4]);
}

static __always_inline int emit_removexattr(void *ctx, int fd, const void *path, const void *name)
{
	struct hids_ev_removexattr *ev = hids_event_begin(HIDS_EV_REMOVEXATTR);

	if (!ev)
		return 0;
	ev->fd = fd;
	ev->reserved = 0;
	HIDS_READ_USER_STR(ev->name, name, &ev->hdr);
	HIDS_READ_USER_STR(ev->path, path, &ev->hdr);
	return HIDS_EMIT(ctx, ev);
}

/* removexattr, lremovexattr: (path, name) */
static __always_inline int on_removexattr(void *ctx, const struct hids_syscall_args *a)
{
	return emit_removexattr(ctx, -1, HIDS_ARG_PTR(a, 0), HIDS_ARG_PTR(a, 1));
}

static __always_inline int on_fremovexattr(void *ctx, const struct hids_syscall_args *a)
{
	return emit_removexattr(ctx, HIDS_ARG_INT(a, 0), NULL, HIDS_ARG_PTR(a, 1));
}

HIDS_SYSCALL_PROBES(fchmodat, on_fchmodat)
HIDS_SYSCALL_PROBES(fchmod, on_fchmod)
HIDS_SYSCALL_PROBES(fchownat, on_fchownat)
HIDS_SYSCALL_PROBES(fchown, on_fchown)
HIDS_SYSCALL_PROBES(mkdirat, on_mkdirat)
HIDS_SYSCALL_PROBES(unlinkat, on_unlinkat)
HIDS_SYSCALL_PROBES(renameat, on_renameat)
HIDS_SYSCALL_PROBES(renameat2, on_renameat2)
HIDS_SYSCALL_PROBES(utimensat, on_utimensat)
HIDS_SYSCALL_PROBES(linkat, on_linkat)
HIDS_SYSCALL_PROBES(setxattr, on_setxattr)
HIDS_SYSCALL_PROBES(lsetxattr, on_setxattr)
HIDS_SYSCALL_PROBES(fsetxattr, on_fsetxattr)
HIDS_SYSCALL_PROBES(removexattr, on_removexattr)
HIDS_SYSCALL_PROBES(lremovexattr, on_removexattr)
HIDS_SYSCALL_PROBES(fremovexattr, on_fremovexattr)

#if defined(__TARGET_ARCH_x86)
static __always_inline int on_chmod(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chmod(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), a->a[1]);
}

static __always_inline int on_chown(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chown(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), HIDS_ARG_INT(a, 1), HIDS_ARG_INT(a, 2), 0);
}

static __always_inline int on_lchown(void *ctx, const struct hids_syscall_args *a)
{
	return emit_chown(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), HIDS_ARG_INT(a, 1), HIDS_ARG_INT(a, 2),
			  AT_SYMLINK_NOFOLLOW);
}

static __always_inline int on_mkdir(void *ctx, const struct hids_syscall_args *a)
{
	return emit_mkdir(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), a->a[1]);
}

static __always_inline int on_rmdir(void *ctx, const struct hids_syscall_args *a)
{
	return emit_rmdir(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0));
}

static __always_inline int on_unlink(void *ctx, const struct hids_syscall_args *a)
{
	return emit_unlink(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), 0);
}

static __always_inline int on_rename(void *ctx, const struct hids_syscall_args *a)
{
	return emit_rename(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), AT_FDCWD, HIDS_ARG_PTR(a, 1), 0);
}

/* utime, utimes: (path, times) */
static __always_inline int on_utimes(void *ctx, const struct hids_syscall_args *a)
{
	return emit_utimes(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), 0);
}

static __always_inline int on_futimesat(void *ctx, const struct hids_syscall_args *a)
{
	return emit_utimes(ctx, HIDS_ARG_INT(a, 0), HIDS_ARG_PTR(a, 1), 0);
}

static __always_inline int on_link(void *ctx, const struct hids_syscall_args *a)
{
	return emit_link(ctx, AT_FDCWD, HIDS_ARG_PTR(a, 0), AT_FDCWD, HIDS_ARG_PTR(a, 1), 0);
}

HIDS_SYSCALL_PROBES(chmod, on_chmod)
HIDS_SYSCALL_PROBES(chown, on_chown)
HIDS_SYSCALL_PROBES(lchown, on_lchown)
HIDS_SYSCALL_PROBES(mkdir, on_mkdir)
HIDS_SYSCALL_PROBES(rmdir, on_rmdir)
HIDS_SYSCALL_PROBES(unlink, on_unlink)
HIDS_SYSCALL_PROBES(rename, on_rename)
HIDS_SYSCALL_PROBES(utime, on_utimes)
HIDS_SYSCALL_PROBES(utimes, on_utimes)
HIDS_SYSCALL_PROBES(futimesat, on_futimesat)
HIDS_SYSCALL_PROBES(link, on_link)
#endif

/* Group `open`: every open syscall funnels into one kernel function, so one kprobe covers them
 * all; the tracepoint family needs one program per syscall. */
#if HIDS_KERNEL_AT_LEAST(5, 6)
SEC("kprobe/do_sys_openat2")
int open__kprobe(struct pt_regs *ctx)
{
	struct open_how *how = (struct open_how *)PT_REGS_PARM3(ctx);
	__u64 flags = 0, mode = 0;

	bpf_probe_read_kernel(&flags, sizeof(flags), &how->flags);
	bpf_probe_read_kernel(&mode, sizeof(mode), &how->mode);
	return emit_open(ctx, (int)PT_REGS_PARM1(ctx), (const void *)PT_REGS_PARM2(ctx), (int)flags, mode);
}
#else
SEC("kprobe/do_sys_open")
int open__kprobe(struct pt_regs *ctx)
{
	return emit_open(ctx, (int)PT_REGS_PARM1(ctx), (const void *)PT_REGS_PARM2(ctx), (int)PT_REGS_PARM3(ctx),
			 PT_REGS_PARM4(ctx));
}
#endif

SEC("tracepoint/syscalls/sys_enter_openat")
int open__tp_openat(struct hids_sys_enter_ctx *ctx)
{
	return emit_open(ctx, (int)ctx->args[0], (const void *)ctx->args[1], (int)ctx->args[2], ctx->args[3]);
}

#if HIDS_KERNEL_AT_LEAST(5, 6)
/* openat2(dfd, path, struct open_how __user *how, size) */
SEC("tracepoint/syscalls/sys_enter_openat2")
int open__tp_openat2(struct hids_sys_enter_ctx *ctx)
{
	struct open_how *how = (struct open_how *)ctx->args[2];
	__u64 flags = 0, mode = 0;

	bpf_probe_read_user(&flags, sizeof(flags), &how->flags);
	bpf_probe_read_user(&mode, sizeof(mode), &how->mode);
	return emit_open(ctx, (int)ctx->args[0], (const void *)ctx->args[1], (int)flags, mode);
}
#endif

#if defined(__TARGET_ARCH_x86)
SEC("tracepoint/syscalls/sys_enter_open")
int open__tp_open(struct hids_sys_enter_ctx *ctx)
{
	return emit_open(ctx, AT_FDCWD, (const void *)ctx->args[0], (int)ctx->args[1], ctx->args[2]);
}
#endif
