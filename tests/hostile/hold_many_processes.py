# attack: hold 3.5 GiB across five extra interpreters, each under its own address-space limit
# expect: the sandbox's memory cgroup kills them (OOM or CRASHED); host memory stays within
# the limit
import subprocess
import sys
import time

import torch.nn as nn

HOLD = "import time; x = b'\\x01' * (700 << 20); print('holding', flush=True); time.sleep(60)"
children = [subprocess.Popen([sys.executable, "-c", HOLD]) for _ in range(5)]
time.sleep(8)
alive = [c.poll() is None for c in children]
print("extra interpreters alive:", sum(alive), flush=True)
if all(alive):
    print("HELD 3500 MiB in extra interpreters", flush=True)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
