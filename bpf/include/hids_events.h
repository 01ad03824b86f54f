/* The event schema shared by every probe object (docs/DESIGN.md). The loader derives its layouts
 * from the object's BTF, so this file is the only definition: HIDS_EV_<NAME> is carried by
 * `struct hids_ev_<name>`, whose first member is `struct hids_hdr hdr`. Fixed-size string fields
 * are NUL-terminated; a field that did not fit or could not be read sets a bit in hdr.flags. */
#ifndef HIDS_EVENTS_H
#define HIDS_EVENTS_H

#define HIDS_COMM_LEN 16
#define HIDS_PATH_MAX 256
#define HIDS_ARGV_MAX 512
#define HIDS_XATTR_NAME_MAX 64
#define HIDS_FSTYPE_MAX 32
#define HIDS_MODARGS_MAX 128

/* hdr.flags */
#define HIDS_F_TRUNCATED (1U << 0)   /* a string field (path, argv, name) was cut to its buffer */
#define HIDS_F_READ_FAILED (1U << 1) /* a user or kernel read failed; that field is empty/zero */

enum hids_event_type {
	HIDS_EV_EXEC = 1,
	HIDS_EV_FORK = 2,
	HIDS_EV_EXIT = 3,
	HIDS_EV_SETUID = 4,
	HIDS_EV_SETGID = 5,
	HIDS_EV_CAPSET = 6,
	HIDS_EV_OPEN = 7,
	HIDS_EV_CHMOD = 8,
	HIDS_EV_CHOWN = 9,
	HIDS_EV_MKDIR = 10,
	HIDS_EV_RMDIR = 11,
	HIDS_EV_RENAME = 12,
	HIDS_EV_UNLINK = 13,
	HIDS_EV_UTIMES = 14,
	HIDS_EV_LINK = 15,
	HIDS_EV_SETXATTR = 16,
	HIDS_EV_REMOVEXATTR = 17,
	HIDS_EV_MODULE_LOAD = 18,
	HIDS_EV_BPF = 19,
	HIDS_EV_PTRACE = 20,
	HIDS_EV_MOUNT = 21,
	HIDS_EV_UMOUNT = 22,
	HIDS_EV_OOM_KILL = 23,
	HIDS_EV_CONNECT = 24,
	HIDS_EV_ACCEPT = 25,
	HIDS_EV_CLOSE = 26,
	HIDS_EV_MAX = 27,
};

struct hids_hdr {
	__u32 type;
	__u32 flags;
	__u64 ts_ns;
	__u32 pid;  /* thread id */
	__u32 tgid; /* process id */
	__u32 ppid; /* tgid of the real parent */
	__u32 uid;
	__u32 gid;
	__u32 reserved;
	__u64 cgroup_id;
	char comm[HIDS_COMM_LEN];
};

/* process family */
struct hids_ev_exec {
	struct hids_hdr hdr;
	__u32 argc;     /* from the kernel, even when argv was truncated */
	__u32 argv_len; /* bytes of argv copied, NULs included */
	char filename[HIDS_PATH_MAX];
	char argv[HIDS_ARGV_MAX]; /* NUL-separated arguments */
};

struct hids_ev_fork {
	struct hids_hdr hdr;
	__u32 child_pid;
	__u32 child_tgid;
};

struct hids_ev_exit {
	struct hids_hdr hdr;
	__s32 exit_code; /* wait(2) status: code << 8 | signal */
	__u32 reserved;
};

struct hids_ev_setuid {
	struct hids_hdr hdr;
	__s32 ruid; /* -1: left unchanged */
	__s32 euid;
	__s32 suid;
	__u32 reserved;
};

struct hids_ev_setgid {
	struct hids_hdr hdr;
	__s32 rgid; /* -1: left unchanged */
	__s32 egid;
	__s32 sgid;
	__u32 reserved;
};

struct hids_ev_capset {
	struct hids_hdr hdr;
	__u32 target_pid; /* 0: the caller */
	__u32 version;
	__u64 effective; /* the two 32-bit words of capability sets v2/v3 */
	__u64 permitted;
	__u64 inheritable;
};

/* file family: dfd is AT_FDCWD (-100) for path-only syscalls, the fd for f* syscalls */
struct hids_ev_open {
	struct hids_hdr hdr;
	__s32 dfd;
	__s32 open_flags;
	__u32 mode;
	__u32 reserved;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_chmod {
	struct hids_hdr hdr;
	__s32 dfd;
	__u32 mode;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_chown {
	struct hids_hdr hdr;
	__s32 dfd;
	__s32 uid; /* -1: left unchanged */
	__s32 gid;
	__s32 at_flags;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_mkdir {
	struct hids_hdr hdr;
	__s32 dfd;
	__u32 mode;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_rmdir {
	struct hids_hdr hdr;
	__s32 dfd;
	__u32 reserved;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_rename {
	struct hids_hdr hdr;
	__s32 olddfd;
	__s32 newdfd;
	__u32 rename_flags;
	__u32 reserved;
	char oldpath[HIDS_PATH_MAX];
	char newpath[HIDS_PATH_MAX];
};

struct hids_ev_unlink {
	struct hids_hdr hdr;
	__s32 dfd;
	__s32 at_flags;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_utimes {
	struct hids_hdr hdr;
	__s32 dfd;
	__s32 at_flags;
	char path[HIDS_PATH_MAX];
};

struct hids_ev_link {
	struct hids_hdr hdr;
	__s32 olddfd;
	__s32 newdfd;
	__s32 at_flags;
	__u32 reserved;
	char oldpath[HIDS_PATH_MAX];
	char newpath[HIDS_PATH_MAX];
};

struct hids_ev_setxattr {
	struct hids_hdr hdr;
	__s32 fd; /* -1 for the path variants */
	__u32 xattr_flags;
	__u64 size;
	char name[HIDS_XATTR_NAME_MAX];
	char path[HIDS_PATH_MAX];
};

struct hids_ev_removexattr {
	struct hids_hdr hdr;
	__s32 fd; /* -1 for the path variants */
	__u32 reserved;
	char name[HIDS_XATTR_NAME_MAX];
	char path[HIDS_PATH_MAX];
};

/* kernel family */
struct hids_ev_module_load {
	struct hids_hdr hdr;
	__s32 fd; /* finit_module's fd, -1 for init_module */
	__u32 module_flags;
	__u64 len; /* init_module's image length */
	char args[HIDS_MODARGS_MAX];
};

struct hids_ev_bpf {
	struct hids_hdr hdr;
	__s32 cmd;
	__u32 attr_size;
};

struct hids_ev_ptrace {
	struct hids_hdr hdr;
	__s64 request;
	__u32 target_pid;
	__u32 reserved;
	__u64 addr;
};

struct hids_ev_mount {
	struct hids_hdr hdr;
	__u64 mount_flags;
	char source[HIDS_PATH_MAX];
	char target[HIDS_PATH_MAX];
	char fstype[HIDS_FSTYPE_MAX];
};

struct hids_ev_umount {
	struct hids_hdr hdr;
	__s32 umount_flags;
	__u32 reserved;
	char target[HIDS_PATH_MAX];
};

struct hids_ev_oom_kill {
	struct hids_hdr hdr;
	__u32 victim_pid;
	__u32 reserved;
};

/* network family: ports in host byte order, IPv4 addresses in the first 4 bytes */
struct hids_ev_connect {
	struct hids_hdr hdr;
	__s32 fd;
	__s32 ret; /* 0 or -EINPROGRESS */
	__u16 family;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct hids_ev_accept {
	struct hids_hdr hdr;
	__s32 fd; /* the new connection's fd */
	__s32 listen_fd;
	__u16 family;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct hids_ev_close {
	struct hids_hdr hdr;
	__s32 fd;
	__u32 reserved;
	__u16 family;
	__u16 protocol;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* One member per event struct plus the enum: referencing this through the anchor pointer puts
 * every type into the object's BTF, whichever structs the object's programs use. */
struct hids_schema {
	enum hids_event_type type;
	struct hids_ev_exec exec;
	struct hids_ev_fork fork;
	struct hids_ev_exit exit;
	struct hids_ev_setuid setuid;
	struct hids_ev_setgid setgid;
	struct hids_ev_capset capset;
	struct hids_ev_open open;
	struct hids_ev_chmod chmod;
	struct hids_ev_chown chown;
	struct hids_ev_mkdir mkdir;
	struct hids_ev_rmdir rmdir;
	struct hids_ev_rename rename;
	struct hids_ev_unlink unlink;
	struct hids_ev_utimes utimes;
	struct hids_ev_link link;
	struct hids_ev_setxattr setxattr;
	struct hids_ev_removexattr removexattr;
	struct hids_ev_module_load module_load;
	struct hids_ev_bpf bpf;
	struct hids_ev_ptrace ptrace;
	struct hids_ev_mount mount;
	struct hids_ev_umount umount;
	struct hids_ev_oom_kill oom_kill;
	struct hids_ev_connect connect;
	struct hids_ev_accept accept;
	struct hids_ev_close close;
};

struct hids_counter {
	__u64 emitted;
	__u64 dropped;
};

/* The agent whose own events are dropped: its tgid and its start time in clock ticks since boot
 * (field 22 of /proc/<tgid>/stat), so that a pid the kernel hands to another process after the
 * agent died never matches (docs/PINS.md). */
struct hids_config {
	__u32 agent_tgid;
	__u32 reserved;
	__u64 agent_start_ticks;
};

#endif
