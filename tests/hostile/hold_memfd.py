# attack: hold 3 GiB in memfd_create files, which no process maps (RLIMIT_AS never sees them)
# expect: the sandbox's memory cgroup kills it (OOM or CRASHED); host memory stays within the limit
import os
import time

import torch.nn as nn

chunk = b"\x01" * (32 << 20)
held = []
for i in range(96):  # 32 MiB per file (under RLIMIT_FSIZE), written, never mapped
    fd = os.memfd_create(f"hold-{i}")
    os.write(fd, chunk)
    held.append(fd)
    if i % 16 == 15:
        print("memfd holds", (i + 1) * 32, "MiB", flush=True)
time.sleep(3)  # long enough for the host's free memory to show it
print("HELD 3 GiB in memfd files", flush=True)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
