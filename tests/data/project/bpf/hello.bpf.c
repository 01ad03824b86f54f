/* Test program: counts sched_process_exec in a per-CPU array. */
#ifndef HIDS_CORE
#include <linux/types.h>
#include <uapi/linux/bpf.h>
#else
#include "vmlinux.h"
#endif
#include "mini.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} execs SEC(".maps");

SEC("raw_tracepoint/sched_process_exec")
int count_exec(void *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&execs, &key);
	if (value)
		*value += 1;
#if DEBUG
	char fmt[] = "exec %d";
	bpf_trace_printk(fmt, sizeof(fmt), USE_SYSCALL_WRAPPER);
#endif
	return 0;
}

char _license[] SEC("license") = "GPL";
