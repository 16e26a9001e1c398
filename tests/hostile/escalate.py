# attack: gain privileges: new user and mount namespaces, mounts, chroot, setuid, ptrace
# expect: every attempt is denied (nothing prints ESCALATED); training then runs normally
import ctypes
import os

import torch.nn as nn

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
with open("/proc/self/status") as status:
    print([line.strip() for line in status if line.startswith("CapEff")])
attempts = {
    "unshare": lambda: libc.unshare(CLONE_NEWUSER | CLONE_NEWNS),
    "mount": lambda: libc.mount(b"none", b"/usr", b"tmpfs", 0, None),
    "ptrace": lambda: libc.ptrace(16, os.getppid(), None, None),
}
for name, attempt in attempts.items():
    print("ESCALATED" if attempt() == 0 else "denied", name, ctypes.get_errno())
for name, action in {"setuid": lambda: os.setuid(0), "chroot": lambda: os.chroot("/tmp")}.items():
    try:
        action()
        print("ESCALATED", name)
    except OSError as e:
        print("denied", name, e)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
