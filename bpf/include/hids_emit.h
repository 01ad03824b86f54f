/* The maps every object shares (docs/DESIGN.md) and the one path an event takes: begin (agent
 * filter, header) in a per-CPU scratch, fill, emit (ring buffer or perf buffer, counted). */
#ifndef HIDS_EMIT_H
#define HIDS_EMIT_H

#define HIDS_SCRATCH_SIZE 1024

/* Events are assembled off-stack (512-byte limit); each must fit the scratch slot. */
_Static_assert(sizeof(struct hids_ev_exec) <= HIDS_SCRATCH_SIZE, "exec event exceeds scratch");
_Static_assert(sizeof(struct hids_ev_mount) <= HIDS_SCRATCH_SIZE, "mount event exceeds scratch");
_Static_assert(sizeof(struct hids_ev_rename) <= HIDS_SCRATCH_SIZE, "rename event exceeds scratch");
_Static_assert(sizeof(struct hids_ev_link) <= HIDS_SCRATCH_SIZE, "link event exceeds scratch");
_Static_assert(sizeof(struct hids_ev_setxattr) <= HIDS_SCRATCH_SIZE, "setxattr event exceeds scratch");

struct hids_scratch {
	char buf[HIDS_SCRATCH_SIZE];
};

#if HIDS_KERNEL_AT_LEAST(5, 8)
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hids_scratch);
} scratch SEC(".maps");

const struct hids_schema *hids_schema_anchor;

char LICENSE[] SEC("license") = "GPL";

/* USER_HZ, the unit of /proc/<pid>/stat's start time, is 100 on every Linux ABI. */
#define HIDS_NS_PER_USER_TICK 10000000ULL

static __always_inline int hids_is_agent(struct task_struct *task, __u32 tgid)
{
	__u32 zero = 0;
	struct hids_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct task_struct *leader = NULL;
	__u64 start_ns = 0;

	if (!cfg || !cfg->agent_tgid || cfg->agent_tgid != tgid)
		return 0;
	/* The same tgid is the agent only if it is the same process: compare start times. */
	if (bpf_probe_read_kernel(&leader, sizeof(leader), &task->group_leader) || !leader)
		return 0;
#if HIDS_KERNEL_AT_LEAST(5, 5)
	bpf_probe_read_kernel(&start_ns, sizeof(start_ns), &leader->start_boottime);
#else
	bpf_probe_read_kernel(&start_ns, sizeof(start_ns), &leader->real_start_time);
#endif
	return start_ns / HIDS_NS_PER_USER_TICK == cfg->agent_start_ticks;
}

/* Returns the scratch slot with a filled header, or NULL for the agent's own events. */
static __always_inline void *hids_event_begin(__u32 type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = NULL;
	struct hids_hdr *hdr;
	__u32 zero = 0;

	if (hids_is_agent(task, pid_tgid >> 32))
		return NULL;
	hdr = bpf_map_lookup_elem(&scratch, &zero);
	if (!hdr)
		return NULL;
	hdr->type = type;
	hdr->flags = 0;
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->pid = (__u32)pid_tgid;
	hdr->tgid = pid_tgid >> 32;
	hdr->ppid = 0;
	if (bpf_probe_read_kernel(&parent, sizeof(parent), &task->real_parent) == 0 && parent)
		bpf_probe_read_kernel(&hdr->ppid, sizeof(hdr->ppid), &parent->tgid);
	hdr->uid = (__u32)uid_gid;
	hdr->gid = uid_gid >> 32;
	hdr->reserved = 0;
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
	return hdr;
}

static __always_inline void hids_count(__u32 type, int dropped)
{
	struct hids_counter *c = bpf_map_lookup_elem(&counters, &type);

	if (!c)
		return;
	if (dropped)
		c->dropped++;
	else
		c->emitted++;
}

/* A full buffer is never silent: the event counts as dropped for its type. */
static __always_inline int hids_event_emit(void *ctx, void *event, __u64 size)
{
	__u32 type = ((struct hids_hdr *)event)->type;
	long err;

#if HIDS_KERNEL_AT_LEAST(5, 8)
	err = bpf_ringbuf_output(&events, event, size, 0);
#else
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, event, size);
#endif
	hids_count(type, err != 0);
	hids_debug("hids: type=%u flags=%x err=%ld\n", type, ((struct hids_hdr *)event)->flags, err);
	return 0;
}

#define HIDS_EMIT(ctx, ev) hids_event_emit((ctx), (ev), sizeof(*(ev)))

/* Reads a NUL-terminated user string into dst[size]; flags a failed read (dst left empty) or a
 * string longer than the buffer (dst holds its start). A NULL src (the f* syscalls) is no string. */
static __always_inline void hids_read_user_str(char *dst, __u32 size, const void *src, __u32 *flags)
{
	long n;
	char next = 0;

	if (!src) {
		dst[0] = 0;
		return;
	}
	n = bpf_probe_read_user_str(dst, size, src);
	if (n < 0) {
		dst[0] = 0;
		*flags |= HIDS_F_READ_FAILED;
	} else if (n == size && bpf_probe_read_user(&next, 1, (const char *)src + size - 1) == 0 && next) {
		*flags |= HIDS_F_TRUNCATED;
	}
}

#define HIDS_READ_USER_STR(field, src, hdr) \
	hids_read_user_str((field), sizeof(field), (const void *)(src), &(hdr)->flags)

#endif
