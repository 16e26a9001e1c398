"""A seccomp filter for sandboxed candidates: the kernel calls no training code needs.

Namespaces, mounts, ptrace, kernel keyrings, BPF, module loading and the like are the
usual ways out of a container or into a kernel bug; a candidate gets EPERM for each.
"""

import errno
import os

DENIED = [
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
    "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
    "userfaultfd", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "move_mount",
    "open_tree", "mount_setattr", "quotactl", "syslog", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
]  # fmt: skip
# clone() flags that make new namespaces.
NAMESPACE_FLAGS = [0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x08000000, 0x04000000,
                   0x02000000]  # fmt: skip


def _build():  # type: ignore[no-untyped-def]
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in NAMESPACE_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: refuse it, and the C
    # library falls back to clone(), whose flags the rules above do check.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f


def filter_fd() -> int:
    """A file descriptor holding the compiled filter, for `bwrap --seccomp FD`.

    The caller passes it to bwrap and closes its own copy.
    """
    fd = os.memfd_create("evo-seccomp", 0)
    with os.fdopen(os.dup(fd), "wb") as out:
        _build().export_bpf(out)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
