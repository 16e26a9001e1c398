# attack: send the trainer a compressed result that inflates to gigabytes when loaded
# expect: refused as a malformed result (CRASHED) without the trainer inflating it
import contextlib
import io
import os
import struct
import zipfile

import torch.nn as nn

buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("val_preds.npy", b"\0" * (512 * 1024 * 1024))
payload = buf.getvalue()
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        os.write(fd, b"R" + struct.pack("<Q", len(payload)) + payload)
os._exit(0)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
