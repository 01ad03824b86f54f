/* Test program that does not compile: the pipeline must report clang's message for it. */
#include <linux/types.h>
#include <uapi/linux/bpf.h>
#include "mini.h"

SEC("raw_tracepoint/sched_process_exec")
int broken(void *ctx)
{
	return undeclared_identifier;
}

char _license[] SEC("license") = "GPL";
