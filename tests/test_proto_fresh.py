"""The committed gRPC code is exactly what `make proto` generates from proto/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "proto" / "evo" / "v1"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in GENERATED.glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "evo" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.name in fresh}
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    extra = sorted(p.name for p in GENERATED.glob("*_pb2*") if p.name not in fresh)
    assert not stale and not extra, f"run `make proto`: stale {stale}, no source for {extra}"
