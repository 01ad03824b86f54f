/* A tiny probe that follows the bpf/ conventions of docs/DESIGN.md (event header, schema anchor,
 * events/counters/config maps, <group>__<hook> programs), so the loader tests can load, attach and
 * decode a real object before the real bpf/ programs exist. Compiled CO-RE at fixture time. */
/* Some kernels' BTF holds a typedef named `config`; keep that name free for the map. */
#define config vmlinux_config
#include "vmlinux.h"
#undef config

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *src) = (void *)114;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static long (*bpf_perf_event_output)(void *ctx, void *map, __u64 flags, void *data, __u64 size) = (void *)25;

enum hids_event_type {
	HIDS_EV_EXEC = 1,
	HIDS_EV_OPEN = 2,
	HIDS_EV_CONNECT = 3,
	HIDS_EV_MAX = 4,
};

struct hids_hdr {
	__u32 type;
	__u32 flags;
	__u64 ts_ns;
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	char comm[16];
};

struct hids_ev_exec {
	struct hids_hdr hdr;
	__u32 argc;
	__u32 argv_len; /* bytes of argv used, NULs included */
	char filename[128];
	char argv[64]; /* NUL-separated arguments (left empty by this probe) */
};

struct hids_ev_open {
	struct hids_hdr hdr;
	__s32 dfd;
	__s32 open_flags;
	char path[128];
};

struct hids_ev_connect {
	struct hids_hdr hdr;
	__u16 family;
	__u16 dport;
	__u8 daddr[16];
};

struct hids_schema {
	enum hids_event_type type;
	struct hids_ev_exec exec;
	struct hids_ev_open open;
	struct hids_ev_connect connect;
};

const struct hids_schema *hids_schema_anchor;

struct hids_counter {
	__u64 emitted;
	__u64 dropped;
};

struct hids_config {
	__u32 agent_tgid;
	__u32 reserved;
};

#ifdef HIDS_TEST_PERF
/* The pre-5.8 shape of `events`: a perf buffer, fed from a per-CPU scratch record. */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[512]);
} scratch SEC(".maps");

static __attribute__((always_inline)) void *reserve(__u64 size)
{
	__u32 key = 0;
	return bpf_map_lookup_elem(&scratch, &key);
}

static __attribute__((always_inline)) void submit(void *ctx, void *ev, __u64 size)
{
	bpf_perf_event_output(ctx, &events, 0xffffffffULL, ev, size);
}
#else
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __attribute__((always_inline)) void *reserve(__u64 size)
{
	return bpf_ringbuf_reserve(&events, size, 0);
}

static __attribute__((always_inline)) void submit(void *ctx, void *ev, __u64 size)
{
	bpf_ringbuf_submit(ev, 0);
}
#endif

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIDS_EV_MAX);
	__type(key, __u32);
	__type(value, struct hids_counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hids_config);
} config SEC(".maps");

static __attribute__((always_inline)) int skip_self(void)
{
	__u32 key = 0;
	struct hids_config *cfg = bpf_map_lookup_elem(&config, &key);
#ifdef HIDS_TEST_UNCHECKED_LOOKUP
	/* Deliberately invalid, for the loader's verifier-failure test: reads past the map value. */
	return cfg && ((volatile __u32 *)cfg)[64] == (bpf_get_current_pid_tgid() >> 32);
#else
	return cfg && cfg->agent_tgid == (bpf_get_current_pid_tgid() >> 32);
#endif
}

static __attribute__((always_inline)) void count(__u32 type, int dropped)
{
	struct hids_counter *c = bpf_map_lookup_elem(&counters, &type);
	if (!c)
		return;
	if (dropped)
		c->dropped += 1;
	else
		c->emitted += 1;
}

static __attribute__((always_inline)) void fill_hdr(struct hids_hdr *hdr, __u32 type)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();
	hdr->type = type;
	hdr->flags = 0;
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->pid = (__u32)id;
	hdr->tgid = id >> 32;
	hdr->ppid = 0;
	hdr->uid = (__u32)ug;
	hdr->gid = ug >> 32;
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

static __attribute__((always_inline)) int emit_exec(void *ctx, const char *filename)
{
	if (skip_self())
		return 0;
	struct hids_ev_exec *ev = reserve(sizeof(*ev));
	if (!ev) {
		count(HIDS_EV_EXEC, 1);
		return 0;
	}
	fill_hdr(&ev->hdr, HIDS_EV_EXEC);
	ev->argc = 0;
	ev->argv_len = 0;
	ev->argv[0] = 0;
	bpf_probe_read_user_str(ev->filename, sizeof(ev->filename), filename);
	submit(ctx, ev, sizeof(*ev));
	count(HIDS_EV_EXEC, 0);
	return 0;
}

static __attribute__((always_inline)) int emit_open(void *ctx, int dfd, const char *path, int flags)
{
	if (skip_self())
		return 0;
	struct hids_ev_open *ev = reserve(sizeof(*ev));
	if (!ev) {
		count(HIDS_EV_OPEN, 1);
		return 0;
	}
	fill_hdr(&ev->hdr, HIDS_EV_OPEN);
	ev->dfd = dfd;
	ev->open_flags = flags;
	bpf_probe_read_user_str(ev->path, sizeof(ev->path), path);
	submit(ctx, ev, sizeof(*ev));
	count(HIDS_EV_OPEN, 0);
	return 0;
}

/* Kprobe family first: it cannot attach on a kernel without kprobes, so the loader must fall
 * back to the tracepoint family of the same group. */
SEC("kprobe/__x64_sys_execve")
int exec__kprobe(struct pt_regs *ctx)
{
#ifdef __TARGET_ARCH_x86
	/* The wrapper's one argument is the user's pt_regs; the filename is its first argument. */
	struct pt_regs *regs = (struct pt_regs *)ctx->di;
	const char *filename = 0;

	bpf_probe_read_kernel(&filename, sizeof(filename), &regs->di);
	return emit_exec(ctx, filename);
#else
	return 0;
#endif
}

SEC("tracepoint/syscalls/sys_enter_execve")
int exec__tracepoint(struct trace_event_raw_sys_enter *ctx)
{
	return emit_exec(ctx, (const char *)ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int open__tracepoint(struct trace_event_raw_sys_enter *ctx)
{
	return emit_open(ctx, (int)ctx->args[0], (const char *)ctx->args[1], (int)ctx->args[2]);
}

char _license[] SEC("license") = "GPL";
