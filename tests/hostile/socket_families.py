# attack: open sockets of every family that reaches past a network namespace (vsock reaches a
# VM's host) or into the kernel (netlink, packet)
# expect: every family but AF_UNIX is refused (nothing prints OPENED); training then runs normally
import socket

import torch.nn as nn

FAMILIES = {
    "AF_VSOCK": (40, socket.SOCK_STREAM),
    "AF_INET": (socket.AF_INET, socket.SOCK_STREAM),
    "AF_INET6": (socket.AF_INET6, socket.SOCK_DGRAM),
    "AF_PACKET": (17, socket.SOCK_RAW),
    "AF_NETLINK": (16, socket.SOCK_RAW),
}
for name, (family, kind) in FAMILIES.items():
    try:
        socket.socket(family, kind).close()
        print("OPENED", name, flush=True)
    except OSError as e:
        print("refused", name, e.errno, flush=True)
    try:
        a, b = socket.socketpair(family, kind)
        a.close(), b.close()
        print("OPENED pair", name, flush=True)
    except OSError as e:
        print("refused pair", name, e.errno, flush=True)
a, b = socket.socketpair(socket.AF_UNIX)  # what training may use
a.close(), b.close()
print("unix pair ok", flush=True)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
