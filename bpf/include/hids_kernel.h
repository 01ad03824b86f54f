/* The one place where the two build modes differ: kernel headers of one exact kernel
 * (non-CO-RE) or a vmlinux.h with CO-RE relocations (HIDS_CORE=1). Everything after this header
 * is written once for both. HIDS_KERNEL_AT_LEAST picks code paths at compile time; a CO-RE
 * object targets current kernels and takes the modern paths. */
#ifndef HIDS_KERNEL_H
#define HIDS_KERNEL_H

#ifdef HIDS_CORE
/* Some kernels' BTF holds a typedef named `config`; keep that name free for the map. */
#define config vmlinux_config
#include "vmlinux.h"
#undef config

#define HIDS_KERNEL_AT_LEAST(a, b) 1

/* vmlinux.h carries types only, no macros. */
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_ISSOCK(m) (((m) & S_IFMT) == S_IFSOCK)
#define EINPROGRESS 115
#define AT_REMOVEDIR 0x200
#define AT_FDCWD -100
#define AT_SYMLINK_NOFOLLOW 0x100
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define NULL ((void *)0)
#else
/* Kernel headers are written for gcc and the kernel's own flags; their warnings say nothing
 * about the probes, and the asm goto stand-ins leave their labels unused. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-label"
#pragma clang diagnostic ignored "-Wignored-attributes"
#pragma clang diagnostic ignored "-Wduplicate-decl-specifier"
#pragma clang diagnostic ignored "-Wmicrosoft-anon-tag"
#include <linux/version.h>
#include <linux/types.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/fs.h>
#include <linux/fdtable.h>
#include <linux/binfmts.h>
#include <linux/net.h>
#include <linux/stat.h>
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/capability.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <net/sock.h>
#include <uapi/linux/bpf.h>
#pragma clang diagnostic pop

#define HIDS_KERNEL_AT_LEAST(a, b) (LINUX_VERSION_CODE >= KERNEL_VERSION(a, b, 0))
#endif

#endif
