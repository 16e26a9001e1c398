# attack: hold 3 GiB in files on /dev/shm (and /tmp when /dev/shm refuses): tmpfs pages
# belong to no process once written
# expect: refused, or the sandbox's memory cgroup kills it (OOM or CRASHED); host memory stays
# within the limit
import os
import time

import torch.nn as nn

chunk = b"\x01" * (64 << 20)
held = 0
for place in ("/dev/shm", "/tmp"):
    try:
        with open(os.path.join(place, "hold"), "wb") as f:
            while held < 3 << 30:
                f.write(chunk)
                f.flush()
                held += len(chunk)
    except OSError as e:
        print(place, "refused after", held >> 20, "MiB:", e, flush=True)
    if held >= 3 << 30:
        break
time.sleep(3)
print("HELD" if held >= 3 << 30 else "held only", held >> 20, "MiB in tmpfs files", flush=True)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
