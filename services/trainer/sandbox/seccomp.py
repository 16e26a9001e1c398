"""The seccomp policy for sandboxed candidates: the kernel calls no training code needs.

Namespaces, mounts, ptrace, kernel keyrings, BPF, module loading and the like are the
usual ways out of a container or into a kernel bug; a candidate gets EPERM for each.
Sockets: training needs none but AF_UNIX (torch's shared-memory manager, the C
library's name service cache), so socket() and socketpair() with any other family
(AF_INET, AF_INET6, AF_PACKET, AF_NETLINK, AF_VSOCK, ...) answer EAFNOSUPPORT. A network
namespace has no interfaces to reach, but it does not isolate vsock: on a VM guest an
AF_VSOCK socket reaches the host side's ports.

One policy, two renderings: `filter_fd()` compiles it for `bwrap --seccomp` (the bwrap
backend), `docker_profile()` writes it as a Docker seccomp profile for the docker
backend (an allowlist, as Docker profiles are). The process backend has none.
"""

import errno
import json
import os
import socket
from functools import cache
from typing import Any

DENIED = [
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
    "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
    "userfaultfd", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "move_mount",
    "open_tree", "mount_setattr", "quotactl", "syslog", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
]  # fmt: skip
# Also refused in the docker profile, which as an allowlist has to name them anyway:
# what a runtime's default profile keeps for privileged containers.
CONTAINER_DENIED = [
    "create_module", "query_module", "get_kernel_syms", "quotactl_fd", "nfsservctl",
    "lookup_dcookie", "fanotify_init", "kcmp", "process_madvise", "fspick", "settimeofday",
    "clock_settime", "clock_adjtime", "stime", "iopl", "ioperm", "vm86", "vm86old", "uselib",
    "ustat", "sysfs", "_sysctl", "vhangup", "sethostname", "setdomainname",
    "afs_syscall", "tuxcall", "security", "getpmsg", "putpmsg", "vserver",
]  # fmt: skip
# clone() flags that make new namespaces.
NAMESPACE_FLAGS = [0x10000000, 0x00020000, 0x20000000, 0x40000000, 0x08000000, 0x04000000,
                   0x02000000]  # fmt: skip
# The only socket family a candidate may open.
SOCKET_FAMILY = socket.AF_UNIX
SOCKET_CALLS = ("socket", "socketpair")
# personality(): PER_LINUX, PER_LINUX | UNAME26, PER_LINUX32, PER_LINUX32 | UNAME26, query.
PERSONAS = [0x0, 0x20000, 0x8, 0x20008, 0xFFFFFFFF]


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
    for call in SOCKET_CALLS:
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, SOCKET_FAMILY))
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


def known_syscalls() -> set[str]:
    """Every system call name libseccomp resolves on x86_64 and aarch64."""
    import pyseccomp as sc

    names: set[str] = set()
    for arch in (sc.Arch.X86_64, sc.Arch.AARCH64):
        for number in range(1024):
            try:
                name = sc.resolve_syscall(arch, number)
            except (ValueError, OSError):
                continue
            if name:
                names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


@cache
def docker_profile(gvisor: bool = False) -> dict[str, Any]:
    """The same policy as a Docker seccomp profile (`docker run --security-opt seccomp=`).

    Every known call is allowed except the denied ones (EPERM); clone only without
    namespace flags, clone3 ENOSYS, sockets of SOCKET_FAMILY only (EAFNOSUPPORT for the
    rest), personality only the ordinary personas; anything unknown answers ENOSYS.

    `gvisor`: for runsc, whose Sentry applies the profile (`--oci-seccomp`) but answers
    every refusal with EPERM, whatever errno the profile names. The C library falls back
    from clone3 to clone only on ENOSYS, so there clone3 goes to the Sentry, which
    implements or refuses it itself: its namespaces are the Sentry's, not the host's."""
    denied = sorted(set(DENIED) | set(CONTAINER_DENIED))
    special = {"clone", "personality", *SOCKET_CALLS} | (set() if gvisor else {"clone3"})
    allowed = sorted(known_syscalls() - set(denied) - special)
    mask = sum(NAMESPACE_FLAGS)

    def arg0(op: str, value: int, value_two: int = 0) -> list[dict[str, Any]]:
        return [{"index": 0, "value": value, "valueTwo": value_two, "op": op}]

    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            # Docker's MASKED_EQ: (arg & value) == valueTwo.
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": arg0("SCMP_CMP_MASKED_EQ", mask, 0)},
            *([] if gvisor else [
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}
            ]),
            {"names": list(SOCKET_CALLS), "action": "SCMP_ACT_ALLOW",
             "args": arg0("SCMP_CMP_EQ", SOCKET_FAMILY)},
            {"names": list(SOCKET_CALLS), "action": "SCMP_ACT_ERRNO",
             "errnoRet": errno.EAFNOSUPPORT, "args": arg0("SCMP_CMP_NE", SOCKET_FAMILY)},
            *({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": arg0("SCMP_CMP_EQ", v)} for v in PERSONAS),
            {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        ],
    }  # fmt: skip


def docker_profile_json(gvisor: bool = False) -> str:
    return json.dumps(docker_profile(gvisor), separators=(",", ":"))
