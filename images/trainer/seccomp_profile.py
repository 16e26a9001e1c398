"""Write the trainer container's seccomp profile: the runtime's default, plus bubblewrap.

The trainer runs every candidate in a bubblewrap sandbox, which needs new user, PID,
network, IPC, UTS and mount namespaces and a few mount calls. The default profiles of
Docker and containerd allow those only to a process holding CAP_SYS_ADMIN, which a
non-root container never has. This profile is an allowlist in the same spirit:

- every system call that libseccomp knows on x86_64 and aarch64 is allowed, except
- DENIED: the calls that reach kernel-wide state or are the usual ways into a kernel bug
  (modules, kexec, BPF, perf, keyrings, ptrace, userfaultfd, io_uring, clocks, swap,
  quotas, the new mount API, setns, NUMA policy), each refused with EPERM;
- clone3 answers ENOSYS (its flags lie in memory a filter cannot read; the C library
  falls back to clone), personality accepts only the ordinary personas;
- anything else, including system calls newer than this list, answers ENOSYS.

What it adds to a runtime default is clone/unshare with namespace flags, mount,
umount2, pivot_root, chroot and sethostname: they let bwrap build the sandbox, and they
work only inside the new user namespace, where the trainer holds no capability over
anything it did not create. The candidate inside the sandbox is then under the
trainer's own, stricter filter (services/trainer/sandbox/seccomp.py), which refuses
namespaces and mounts again; seccomp filters stack and the strictest answer wins.

    .venv/bin/python images/trainer/seccomp_profile.py     # rewrites all three files

The profile goes to images/trainer/ (for `docker run --security-opt seccomp=...`) and to
k8s/node/ (to install under the kubelet's seccomp directory on each trainer node).

It also writes images/sandbox/evo-sandbox-seccomp.json: the profile the docker sandbox
backend gives each candidate's container (services/trainer/sandbox/seccomp.py builds it
at run time; the file shows it to operators and lets `docker run` use it by hand).
"""

import errno
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: the sandbox's policy is in the package
NAME = "evo-trainer-bwrap.json"
OUTPUTS = [REPO / "images/trainer" / NAME, REPO / "k8s/node" / NAME]
SANDBOX_OUTPUT = REPO / "images/sandbox/evo-sandbox-seccomp.json"

DENIED = sorted(
    {
        # modules, kexec, reboot, kernel logs, accounting, swap, quotas
        "init_module", "finit_module", "delete_module", "create_module", "query_module",
        "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "syslog", "acct",
        "swapon", "swapoff", "quotactl", "quotactl_fd", "nfsservctl", "lookup_dcookie",
        # kernel interfaces with a long record of privilege escalations
        "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
        # other processes' memory
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "process_madvise",
        # file handles bypass path checks; clocks are system-wide
        "open_by_handle_at", "name_to_handle_at", "settimeofday", "clock_settime",
        "clock_adjtime", "stime",
        # bwrap 0.8 mounts with mount(2) and never joins an existing namespace
        "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
        "mount_setattr",
        # NUMA placement (CAP_SYS_NICE in the runtime defaults); legacy and x86 port I/O
        "mbind", "set_mempolicy", "migrate_pages", "move_pages", "set_mempolicy_home_node",
        "iopl", "ioperm", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "vhangup",
        # never implemented on Linux
        "afs_syscall", "tuxcall", "security", "getpmsg", "putpmsg", "vserver",
    }
)  # fmt: skip
SPECIAL = {"clone3", "personality"}
# PER_LINUX, PER_LINUX | UNAME26, PER_LINUX32, PER_LINUX32 | UNAME26, and the query.
PERSONAS = [0x0, 0x20000, 0x8, 0x20008, 0xFFFFFFFF]


def known_syscalls() -> set[str]:
    """Every name libseccomp resolves on x86_64 and aarch64."""
    from services.trainer.sandbox.seccomp import known_syscalls as known

    return known()


def profile(names: set[str]) -> dict[str, object]:
    allowed = sorted(names - set(DENIED) - SPECIAL)
    personality = [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
        }
        for v in PERSONAS
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            *personality,
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
        ],
    }


def main() -> None:
    from services.trainer.sandbox.seccomp import docker_profile

    text = json.dumps(profile(known_syscalls()), indent=1) + "\n"
    sandbox = json.dumps(docker_profile(), indent=1) + "\n"
    for out, content in [*((o, text) for o in OUTPUTS), (SANDBOX_OUTPUT, sandbox)]:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(content)
        print(f"wrote {out.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
