# attack: print terminal control sequences: clear the screen, set the window title, write
#   the clipboard (OSC 52), ring the bell, an 8-bit CSI, and reorder text (bidi override)
# expect: OK, with every control character escaped in the log tail and nothing raw left
import sys

import torch.nn as nn

print("\x1b[2J\x1b[H\x1b]0;pwned-title\x07\x1b]52;c;cm0gLXJmIH4=\x07\x07\x9b31m\u202eevil")
sys.stderr.write("\x1bc\r\x1b[31mred\x1b[0m\n")


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
