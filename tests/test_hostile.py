"""Hostile candidates through the real Trainer service: every attack must be contained.

Runs this project's own attacks (tests/hostile/) and every file of ../shared/hostile/
when that folder exists, on the bwrap backend and, where a Docker engine is
reachable, the docker backend. Each file's `# expect:` is checked below; and for
every file: no canary leaks, the host listener hears nothing, no file appears
outside, no sandbox process outlives the evaluation, the service answers the next call.
"""

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.trainer import server
from services.trainer.sandbox import cgroups
from services.trainer.sandbox.base import GIB, Limits
from services.trainer.sandbox.local import SANDBOX_UID_BASE, SANDBOX_UID_COUNT

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "hostile"
FILES = sorted((ROOT / "tests" / "hostile").glob("*.py"))
if SHARED.is_dir():
    FILES += sorted(SHARED.glob("*.py"))

# Generous enough for a training and a scoring run of 100 steps on a loaded 2-core machine.
WALL_SECONDS = 20.0
CANARY_DIR = Path("/tmp/evo-canary")
LISTEN = ("127.0.0.1", 47999)
OUTSIDE = [
    Path("/tmp/evo-pwned"),
    Path("/tmp/evo-pwned-later"),
    Path.home() / "evo-pwned",
    Path("/tmp/evo-daemon-alive"),
    Path("/tmp/result.json"),
    Path("/tmp/fill"),
]

Check = Callable[[pb.EvaluateResponse], bool]
OK, INVALID, REJECTED = (
    common.EVAL_STATUS_OK,
    common.EVAL_STATUS_INVALID,
    common.EVAL_STATUS_REJECTED,
)
TIMEOUT, OOM, CRASHED = (
    common.EVAL_STATUS_TIMEOUT,
    common.EVAL_STATUS_OOM,
    common.EVAL_STATUS_CRASHED,
)

EXPECT: dict[str, Check] = {
    "fake_metrics.py": lambda r: r.status == OK and r.metrics.test_accuracy < 0.25,
    "flood_output.py": lambda r: r.status == CRASHED and len(r.log_tail.encode()) <= 16 * 1024,
    "fork_bomb.py": lambda r: r.status != OK and r.wall_seconds < WALL_SECONDS + 15,
    "giant_model.py": lambda r: r.status == REJECTED and "4,298,375,178" in r.message,
    "infinite_loop.py": lambda r: r.status == TIMEOUT,
    "kill_parent.py": lambda r: r.status in (OK, CRASHED),
    "memory_bomb.py": lambda r: r.status == OOM,
    "network_egress.py": lambda r: "CONNECTED" not in r.log_tail,
    "read_host_secret.py": lambda r: r.status == OK,
    "sleeper_daemon.py": lambda r: r.status == OK,
    "syntax_error.py": lambda r: r.status == INVALID and "line 5" in r.message,
    "write_outside.py": lambda r: r.status == OK,
    "forge_result.py": lambda r: r.status != OK or r.metrics.test_accuracy < 0.25,
    "zip_bomb_result.py": lambda r: r.status == CRASHED and "malformed" in r.message,
    "fill_disk.py": lambda r: r.status in (OK, CRASHED),
    "escalate.py": lambda r: r.status == OK and "ESCALATED" not in r.log_tail,
    "wrong_shape.py": lambda r: r.status == INVALID and "expected (2, 10)" in r.message,
    # Scores the candidate cannot forge (issue 16): see each file's header.
    "lookup_held_out.py": lambda r: r.status != OK or at_chance(r),
    "hidden_weights_global.py": lambda r: (
        r.status != OK or (r.metrics.num_params == 1 and at_chance(r))
    ),
    "hidden_weights_attribute.py": lambda r: r.status == OK and r.metrics.num_params == 401,
    "replaced_encoder.py": lambda r: r.status == CRASHED or at_chance(r),
    "forge_checkpoints.py": lambda r: r.status == CRASHED and "malformed" in r.message,
    "forge_numbers.py": lambda r: r.status == CRASHED and "loss of nan" in r.message,
    "malformed_end.py": lambda r: r.status == CRASHED and "malformed" in r.message,
    "huge_progress_frame.py": lambda r: r.status == CRASHED and "progress frame" in r.message,
    "progress_flood.py": lambda r: r.status == OK and r.metrics.steps_completed == 100,
    "many_members.py": lambda r: r.status == CRASHED and "malformed" in r.message,
    "terminal_escapes.py": lambda r: (
        r.status == OK and clean_terminal(r.log_tail) and "\\x1b]52" in r.log_tail
    ),
    "lazy_linear.py": lambda r: r.status == OK and r.metrics.num_params == 410,
    # Memory held outside any one process: the sandbox's cgroup counts it (see also
    # tests/test_sandbox_limits.py, which watches the host's free memory meanwhile).
    "hold_memfd.py": lambda r: r.status in (OOM, CRASHED) and "HELD" not in r.log_tail,
    "hold_sysv_shm.py": lambda r: r.status in (OOM, CRASHED) and "HELD" not in r.log_tail,
    # The kernel may kill only some of the extra interpreters; the child then trains on.
    "hold_many_processes.py": lambda r: r.status in (OK, OOM, CRASHED) and "HELD" not in r.log_tail,
    "hold_dev_shm.py": lambda r: "HELD" not in r.log_tail,
    "socket_families.py": lambda r: (
        r.status == OK and "OPENED" not in r.log_tail and "unix pair ok" in r.log_tail
    ),
    "import_tree.py": lambda r: (
        r.status == OK and "ESCAPED" not in r.log_tail and "tree seen:" in r.log_tail
    ),
}


def at_chance(r: pb.EvaluateResponse) -> bool:
    """Scored OK but no better than guessing (10 classes) on both held-out splits."""
    return r.status == OK and r.metrics.test_accuracy < 0.25 and r.metrics.best_val_accuracy < 0.25


def clean_terminal(text: str) -> bool:
    """Nothing a terminal would act on: no C0 control but tab and newline, no DEL, no C1."""
    return not any(
        (ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) < 0xA0 or 0x202A <= ord(c) <= 0x202E
        for c in text
    )


class Listener:
    """The host's TCP listener that no candidate may reach."""

    def __init__(self) -> None:
        self.sock = socket.create_server(LISTEN)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def canaries() -> Iterator[dict[str, str]]:
    values = {"env": f"env-{secrets.token_hex(8)}", "file": f"file-{secrets.token_hex(8)}"}
    os.environ["EVO_CANARY_SECRET"] = values["env"]
    CANARY_DIR.mkdir(exist_ok=True)
    (CANARY_DIR / "secret.txt").write_text(values["file"])
    yield values
    os.environ.pop("EVO_CANARY_SECRET", None)


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    lis = Listener()
    yield lis
    lis.close()


def docker_ready() -> str:
    """Why the docker backend cannot run here, or '' if it can."""
    try:
        from services.trainer.sandbox.docker import DockerBackend
    except ImportError as e:
        return f"docker backend unavailable: {e}"
    try:
        DockerBackend(Limits()).close()
    except Exception as e:
        return str(e)
    return ""


def runsc_ready() -> str:
    """Why the docker backend cannot run under gVisor here, or '' if it can.

    Opt-in (EVO_SANDBOX_RUNTIME=runsc): under runsc two files still end with the wrong
    status (sleeper_daemon.py and many_members.py sometimes end CRASHED, "exited before
    returning a result"; contained, but not the expected status: docs/security.md)."""
    if os.environ.get("EVO_SANDBOX_RUNTIME") != "runsc":
        return "the corpus under gVisor is opt-in: EVO_SANDBOX_RUNTIME=runsc (docs/security.md)"
    if why := docker_ready():
        return why
    try:
        from services.trainer.sandbox.docker import DockerBackend

        DockerBackend(Limits(), runtime="runsc").close()
    except Exception as e:
        return str(e)
    return ""


@pytest.fixture(scope="module", params=["bwrap", "docker", "docker+runsc"])
def served(
    request: pytest.FixtureRequest, canaries: dict[str, str]
) -> Iterator[tuple[pb_grpc.TrainerStub, server.Trainer]]:
    backend, _, runtime = request.param.partition("+")
    if backend == "docker" and (why := runsc_ready() if runtime else docker_ready()):
        # gVisor is optional (docs/security.md); CI fails only when it was asked for.
        if os.environ.get("CI") and (not runtime or os.environ.get("EVO_SANDBOX_RUNTIME")):
            pytest.fail(f"CI must run the {request.param} backend: {why}")
        pytest.skip(why)
    config = server.TrainerConfig(
        backend=backend,
        docker_runtime=runtime,
        slots=1,
        warm=1,
        limits=Limits(wall_seconds=WALL_SECONDS, memory_bytes=2 * GIB),
    )
    trainer = server.Trainer(config)
    service = server.start(trainer, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.TrainerStub(channel), trainer
    service.stop(grace=1)
    trainer.close()


def sandbox_processes(trainer: server.Trainer) -> list[str]:
    """This trainer's sandbox processes, other than the pre-started ones waiting for a job.

    A killed process is gone once the kernel has reaped it; allow a moment for that,
    then describe whatever is left so that a failure says what it was. Other trainers on
    this machine (other test runs) use the same sandbox uids: a process is this trainer's
    by its cgroup (a local sandbox's group, a container this trainer made) where the
    host has cgroups, and by its uid alone where it has none.
    """
    deadline = time.monotonic() + 60  # let the pool finish pre-starting its replacement
    while (
        trainer.pool.ready.qsize() < trainer.pool.size or trainer.pool.starting()
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    ready = list(trainer.pool.ready.queue)
    waiting = {getattr(sb, "uid", None) for sb in ready}
    # A group's path ends its line in /proc/PID/cgroup.
    waiting_groups = {
        f"/{cgroups.PARENT}/{d.name}\n"
        for sb in ready
        if getattr(sb, "group", None)
        for d in sb.group.dirs.values()
    }
    containers: set[str] = set()
    if trainer.backend.name == "docker":
        from services.trainer.sandbox.docker import OWNER, OWNER_LABEL

        client = trainer.backend.client  # type: ignore[attr-defined]
        made = client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={OWNER}"})
        containers = {c.id for c in made} - {getattr(sb, "id", None) for sb in ready}
    own_group = f"/{cgroups.PARENT}/{trainer.backend.name}-{os.getpid()}-"
    grouped = bool(getattr(trainer.backend, "cgroups", None) and trainer.backend.cgroups.enforced)  # type: ignore[attr-defined]
    settle = time.monotonic() + 5
    while True:
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(
                    ln.split(":", 1) for ln in status.read_text().splitlines() if ":" in ln
                )
                cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                groups = (status.parent / "cgroup").read_text() + "\n"
            except OSError:
                continue
            uid = int(fields["Uid"].split()[0])
            if not SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT:
                continue
            if trainer.backend.name == "docker":
                mine = any(c in groups for c in containers)
            elif grouped:  # a local sandbox's own group
                mine = own_group in groups and not any(g in groups for g in waiting_groups)
            else:  # no cgroups to tell sandboxes apart
                mine = uid not in waiting
            if mine:
                found.append(
                    f"pid {status.parent.name} uid {uid} state {fields['State'].strip()} "
                    f"ppid {fields['PPid'].strip()}: {cmdline.decode(errors='replace')[:200]}"
                )
        if not found or time.monotonic() > settle:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.parent.name}/{p.name}" for p in FILES])
def test_hostile_candidate_is_contained(
    path: Path,
    served: tuple[pb_grpc.TrainerStub, server.Trainer],
    canaries: dict[str, str],
    listener: Listener,
) -> None:
    stub, trainer = served
    for leftover in OUTSIDE:
        leftover.unlink(missing_ok=True)
    before = listener.connections
    request = pb.EvaluateRequest(
        program=pb.Program(code=path.read_text()),
        task="mnist1d",
        budget=pb.Budget(steps=100, seed=1),
        request_id=path.name,
    )
    result = stub.Evaluate(request, timeout=WALL_SECONDS + 60)

    expect = EXPECT.get(path.name)
    shown = f"{path.name}: status {common.EvalStatus.Name(result.status)} {result.message!r}"
    assert expect is None or expect(result), shown
    # Whatever the candidate printed or returned, nothing raw reaches a terminal or the store.
    assert clean_terminal(result.message) and clean_terminal(result.log_tail), shown
    text = result.SerializeToString().decode(errors="ignore")
    assert canaries["env"] not in text and canaries["file"] not in text, f"{shown}: canary leaked"
    if path.name == "sleeper_daemon.py":
        time.sleep(6)  # the daemon would have written its file by now
    assert listener.connections == before, f"{shown}: the host listener was reached"
    assert [p for p in OUTSIDE if p.exists()] == [], f"{shown}: wrote outside the sandbox"
    assert sandbox_processes(trainer) == [], f"{shown}: a sandbox process outlived the evaluation"
    capacity = stub.GetCapacity(pb.GetCapacityRequest(), timeout=10)
    assert capacity.slots_busy == 0


def test_service_still_trains_after_the_attacks(
    served: tuple[pb_grpc.TrainerStub, server.Trainer],
) -> None:
    stub, _ = served
    code = (ROOT / "services/trainer/tasks/seeds/mnist1d/cnn.py").read_text()
    request = pb.EvaluateRequest(
        program=pb.Program(code=code), task="mnist1d", budget=pb.Budget(steps=200, seed=1)
    )
    result = stub.Evaluate(request, timeout=120)
    assert result.status == OK and result.metrics.num_params == 5210
    assert result.sandbox.isolated
