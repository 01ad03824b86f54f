/* The slice of libbpf's bpf_helpers.h / bpf_tracing.h the probes use, so that a stitched source
 * needs nothing but kernel headers (hosts compile it at runtime without libbpf-dev). Helper ids
 * come from the kernel's own enum bpf_func_id. */
#ifndef HIDS_HELPERS_H
#define HIDS_HELPERS_H

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Each object uses a subset; unused pointers are not worth a warning. */
#define HIDS_HELPER static __attribute__((unused))

HIDS_HELPER void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
HIDS_HELPER long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   __u64 flags) = (void *)BPF_FUNC_map_update_elem;
HIDS_HELPER long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_delete_elem;
HIDS_HELPER __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
HIDS_HELPER __u64 (*bpf_get_current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;
HIDS_HELPER __u64 (*bpf_get_current_uid_gid)(void) = (void *)BPF_FUNC_get_current_uid_gid;
HIDS_HELPER long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)BPF_FUNC_get_current_comm;
HIDS_HELPER __u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
HIDS_HELPER __u64 (*bpf_get_current_cgroup_id)(void) = (void *)BPF_FUNC_get_current_cgroup_id;
HIDS_HELPER long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;
HIDS_HELPER long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_kernel;
HIDS_HELPER long (*bpf_probe_read_user_str)(void *dst, __u32 size,
				       const void *src) = (void *)BPF_FUNC_probe_read_user_str;
HIDS_HELPER long (*bpf_probe_read_kernel_str)(void *dst, __u32 size,
					 const void *src) = (void *)BPF_FUNC_probe_read_kernel_str;
HIDS_HELPER long (*bpf_perf_event_output)(void *ctx, void *map, __u64 flags, void *data,
				     __u64 size) = (void *)BPF_FUNC_perf_event_output;
HIDS_HELPER long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size,
				  __u64 flags) = (void *)BPF_FUNC_ringbuf_output;
HIDS_HELPER long (*bpf_trace_printk)(const char *fmt, __u32 fmt_size, ...) = (void *)BPF_FUNC_trace_printk;

/* Argument registers of a traced kernel function (kprobe ctx), and of a syscall as the inner
 * pt_regs of a syscall wrapper holds them. */
#if defined(__TARGET_ARCH_x86)
#define PT_REGS_PARM1(x) ((x)->di)
#define PT_REGS_PARM2(x) ((x)->si)
#define PT_REGS_PARM3(x) ((x)->dx)
#define PT_REGS_PARM4(x) ((x)->cx)
#define PT_REGS_PARM5(x) ((x)->r8)
#define PT_REGS_PARM6(x) ((x)->r9)
#define HIDS_SYSCALL_REG1 di
#define HIDS_SYSCALL_REG2 si
#define HIDS_SYSCALL_REG3 dx
#define HIDS_SYSCALL_REG4 r10
#define HIDS_SYSCALL_REG5 r8
#define HIDS_SYSCALL_REG6 r9
#define HIDS_SYSCALL_PREFIX "__x64_sys_"
#elif defined(__TARGET_ARCH_arm64)
#define PT_REGS_PARM1(x) ((x)->regs[0])
#define PT_REGS_PARM2(x) ((x)->regs[1])
#define PT_REGS_PARM3(x) ((x)->regs[2])
#define PT_REGS_PARM4(x) ((x)->regs[3])
#define PT_REGS_PARM5(x) ((x)->regs[4])
#define PT_REGS_PARM6(x) ((x)->regs[5])
/* x0 is the return register; the syscall entry saved the first argument in orig_x0. */
#define HIDS_SYSCALL_REG1 orig_x0
#define HIDS_SYSCALL_REG2 regs[1]
#define HIDS_SYSCALL_REG3 regs[2]
#define HIDS_SYSCALL_REG4 regs[3]
#define HIDS_SYSCALL_REG5 regs[4]
#define HIDS_SYSCALL_REG6 regs[5]
#define HIDS_SYSCALL_PREFIX "__arm64_sys_"
#else
#error "define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

/* bpf_printk traces only in the DEBUG variant: DEBUG=0 objects carry no format strings. */
#if DEBUG
#define hids_debug(fmt, ...)                                                        \
	({                                                                          \
		char ____fmt[] = fmt;                                               \
		bpf_trace_printk(____fmt, sizeof(____fmt), ##__VA_ARGS__);          \
	})
#else
#define hids_debug(fmt, ...) ((void)0)
#endif

#endif
