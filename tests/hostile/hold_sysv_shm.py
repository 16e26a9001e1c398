# attack: hold 3 GiB in System V shared memory segments, attached only while touched
# expect: the sandbox's memory cgroup kills it (OOM or CRASHED); host memory stays within the limit
import ctypes
import time

import torch.nn as nn

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
SEGMENT = 256 << 20
segments = []
for i in range(12):  # 12 x 256 MiB
    sid = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(SEGMENT), IPC_CREAT | 0o600)
    if sid < 0:
        print("shmget refused", ctypes.get_errno(), flush=True)
        break
    addr = libc.shmat(sid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print("shmat refused", ctypes.get_errno(), flush=True)
        break
    ctypes.memset(addr, 1, SEGMENT)  # the pages now exist and belong to no process
    libc.shmdt(ctypes.c_void_p(addr))
    segments.append(sid)
    print("shm holds", (i + 1) * 256, "MiB", flush=True)
time.sleep(3)
print(f"HELD {len(segments) * 256} MiB in System V segments", flush=True)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
