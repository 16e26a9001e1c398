"""Text from untrusted sources made safe to store and to show on a terminal."""

# C0 controls but tab and newline, DEL, and the C1 controls (ESC starts terminal
# sequences: clear screen, window titles, OSC 52 clipboard writes; CSI is also C1 0x9b).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (9, 10)}
# Characters that reorder what a terminal or editor shows (the "Trojan Source" ones).
_CONTROLS.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def escape_controls(text: str) -> str:
    """`text` with every control character written out as a visible escape (ESC becomes
    the four characters `\\x1b`), tab and newline kept."""
    return text.translate(_CONTROLS)


def escaped_tail(text: str, limit_bytes: int) -> str:
    """`text` escaped, then cut to its last `limit_bytes` bytes of UTF-8."""
    data = escape_controls(text).encode()
    return data[-limit_bytes:].decode(errors="ignore") if len(data) > limit_bytes else data.decode()
