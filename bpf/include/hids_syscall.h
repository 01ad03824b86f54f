/* Syscall events hook two ways, both reducing to the same six raw arguments:
 *  - `<group>__kprobe`: a kprobe on the syscall function. With USE_SYSCALL_WRAPPER the kernel
 *    wraps every syscall in __<arch>_sys_<name>(const struct pt_regs *regs), so the arguments sit
 *    in the user pt_regs the wrapper receives; without it sys_<name> takes them as plain
 *    function arguments.
 *  - `<group>__tp`: tracepoint syscalls/sys_enter_<name>, whose context layout is stable ABI.
 * The loader tries the kprobe and falls back to the tracepoint. */
#ifndef HIDS_SYSCALL_H
#define HIDS_SYSCALL_H

struct hids_syscall_args {
	unsigned long a[6];
};

/* tracepoint/syscalls/sys_enter_*: 8 bytes of common fields, the syscall nr, six arguments. */
struct hids_sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

/* tracepoint/syscalls/sys_exit_*: 8 bytes of common fields, the syscall nr, the return value. */
struct hids_sys_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

static __always_inline void hids_tp_args(struct hids_sys_enter_ctx *ctx, struct hids_syscall_args *out)
{
	out->a[0] = ctx->args[0];
	out->a[1] = ctx->args[1];
	out->a[2] = ctx->args[2];
	out->a[3] = ctx->args[3];
	out->a[4] = ctx->args[4];
	out->a[5] = ctx->args[5];
}

#if USE_SYSCALL_WRAPPER
#define HIDS_KPROBE_SYSCALL_SEC(name) SEC("kprobe/" HIDS_SYSCALL_PREFIX #name)
#define HIDS_READ_REG(dst, regs, reg) bpf_probe_read_kernel(&(dst), sizeof(dst), &(regs)->reg)

static __always_inline void hids_kprobe_args(struct pt_regs *ctx, struct hids_syscall_args *out)
{
	struct pt_regs *regs = (struct pt_regs *)PT_REGS_PARM1(ctx);

	HIDS_READ_REG(out->a[0], regs, HIDS_SYSCALL_REG1);
	HIDS_READ_REG(out->a[1], regs, HIDS_SYSCALL_REG2);
	HIDS_READ_REG(out->a[2], regs, HIDS_SYSCALL_REG3);
	HIDS_READ_REG(out->a[3], regs, HIDS_SYSCALL_REG4);
	HIDS_READ_REG(out->a[4], regs, HIDS_SYSCALL_REG5);
	HIDS_READ_REG(out->a[5], regs, HIDS_SYSCALL_REG6);
}
#else
#define HIDS_KPROBE_SYSCALL_SEC(name) SEC("kprobe/sys_" #name)

static __always_inline void hids_kprobe_args(struct pt_regs *ctx, struct hids_syscall_args *out)
{
	out->a[0] = PT_REGS_PARM1(ctx);
	out->a[1] = PT_REGS_PARM2(ctx);
	out->a[2] = PT_REGS_PARM3(ctx);
	out->a[3] = PT_REGS_PARM4(ctx);
	out->a[4] = PT_REGS_PARM5(ctx);
	out->a[5] = PT_REGS_PARM6(ctx);
}
#endif

/* Defines group `name` for syscall `name`: `name__kprobe` and `name__tp`, both calling
 * `handler(void *ctx, const struct hids_syscall_args *args)`. */
#define HIDS_SYSCALL_PROBES(name, handler)                                          \
	HIDS_KPROBE_SYSCALL_SEC(name)                                               \
	int name##__kprobe(struct pt_regs *ctx)                                     \
	{                                                                           \
		struct hids_syscall_args args = {};                                 \
		hids_kprobe_args(ctx, &args);                                       \
		return handler(ctx, &args);                                         \
	}                                                                           \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                 \
	int name##__tp(struct hids_sys_enter_ctx *ctx)                              \
	{                                                                           \
		struct hids_syscall_args args;                                      \
		hids_tp_args(ctx, &args);                                           \
		return handler(ctx, &args);                                         \
	}

#define HIDS_ARG_PTR(args, i) ((const void *)(args)->a[i])
#define HIDS_ARG_INT(args, i) ((int)(args)->a[i])

#endif
