"""Every gRPC call the project makes carries a deadline.

A call without one waits forever on a service that hangs (a half-open connection, a
stuck database), and with it the search. This reads the source of controller/ and
services/ and fails on any call of a gRPC method (a method of one of the project's
services, or of the health service) that does not pass `timeout=`. Calls made through a
helper that adds the deadline itself (`Lineage.__call__`, the CLI's `call`) are checked
there.
"""

import ast
from pathlib import Path

from evo.v1 import lineage_pb2, proposer_pb2, trainer_pb2
from grpc_health.v1 import health_pb2

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    m.name
    for file in (lineage_pb2, trainer_pb2, proposer_pb2, health_pb2)
    for service in file.DESCRIPTOR.services_by_name.values()
    for m in service.methods
}


def calls_without_deadline(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in METHODS
            and not any(k.arg == "timeout" for k in node.keywords)
        ):
            found.append(f"{name}:{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_every_grpc_call_has_a_deadline() -> None:
    files = sorted([*ROOT.glob("controller/**/*.py"), *ROOT.glob("services/**/*.py")])
    assert len(files) > 20
    missing = [
        problem
        for path in files
        for problem in calls_without_deadline(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not missing, "gRPC calls without a deadline:\n" + "\n".join(missing)


def test_the_audit_sees_a_call_without_a_deadline() -> None:
    source = "stub.GetSearch(request)\nstub.GetSearch(request, timeout=5)\nhealth.Check(r)\n"
    assert calls_without_deadline(source, "x.py") == [
        "x.py:1: stub.GetSearch(...)",
        "x.py:3: health.Check(...)",
    ]


def test_the_helpers_that_call_by_name_add_the_deadline() -> None:
    """The two places that call a stub method by name pass the deadline themselves."""
    clients = (ROOT / "controller/clients.py").read_text()
    assert "rpc(request, timeout=LINEAGE_TIMEOUT_SECONDS)" in clients
    cli = (ROOT / "controller/cli.py").read_text()
    assert "return method(request, timeout=RPC_TIMEOUT_SECONDS)" in cli
