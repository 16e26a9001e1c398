"""`evo up` / `evo down`: the three services as local background processes.

The embedded defaults: the lineage store on a SQLite file in $EVO_HOME, the trainer on
the bwrap sandbox, the proposal service on SmolLM2-135M (`hf`). What was started is
written to $EVO_HOME/stack/state.json so that `evo down` (from any shell) stops exactly
those processes; each service logs to $EVO_HOME/stack/<name>.log.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import addresses

# The first start of the `hf` backend (or the llamacpp backend's first soft prompt-tuning)
# converts the GGUF model file (about 40 s on 2 cores).
READY_TIMEOUT_SECONDS = 600.0
STOP_TIMEOUT_SECONDS = 30.0


Say = Callable[[str], None]


class StackError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    pid: int
    address: str
    log: str


def home() -> Path:
    return Path(os.environ.get("EVO_HOME", Path.home() / ".evo"))


def state_file() -> Path:
    return home() / "stack" / "state.json"


def running() -> list[Process]:
    """The processes of the last `evo up` that are still alive."""
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in (Process(**d) for d in data) if _alive(p.pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (an exited child not yet reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def port(service: str) -> int:
    """The port a service listens on: the one its client address names ($EVO_<SVC>_ADDRESS)."""
    target = addresses.resolve(service, None)
    try:
        return int(target.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise StackError(
            f"{addresses.env_var(service)}={target} names no port; use host:port"
        ) from None


def commands(
    trainer_backend: str,
    slots: int,
    lm_backend: str,
    lm_model: str | None,
    with_lm: bool,
    lm_url: str | None = None,
    time_limit: float = 0,
) -> dict[str, list[str]]:
    evo = [sys.executable, "-m", "evo_cli", "serve"]
    ports = {name: port(name) for name in addresses.DEFAULT_PORTS}
    found = {
        "lineage": [*evo, "lineage", "--port", str(ports["lineage"])],
        "trainer": [
            *evo,
            "trainer",
            "--port",
            str(ports["trainer"]),
            "--backend",
            trainer_backend,
            "--slots",
            str(slots),
        ]
        + (["--time-limit", str(time_limit)] if time_limit else []),
    }
    if with_lm:
        found["proposer"] = [*evo, "lm", "--port", str(ports["proposer"]), "--backend", lm_backend]
        if lm_model:
            found["proposer"] += ["--model", lm_model]
        if lm_url:
            found["proposer"] += ["--url", lm_url]
    return found


def up(
    trainer_backend: str = "bwrap",
    slots: int = 1,
    lm_backend: str = "llamacpp",
    lm_model: str | None = None,
    with_lm: bool = True,
    say: Say = print,
    lm_url: str | None = None,
    time_limit: float = 0,
) -> list[Process]:
    """Start the services not already running and wait until each answers its health check."""
    alive = {p.name: p for p in running()}
    folder = state_file().parent
    folder.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    for name, argv in commands(
        trainer_backend, slots, lm_backend, lm_model, with_lm, lm_url, time_limit
    ).items():
        if name in alive:
            say(f"{name}: already running (pid {alive[name].pid}, {alive[name].address})")
            continue
        log_path = folder / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in this shell does not reach it
                cwd=Path(__file__).resolve().parent.parent,
            )
        started.append(Process(name, proc.pid, f"localhost:{port(name)}", str(log_path)))
        say(f"{name}: starting (pid {proc.pid}, log {log_path})")
    everything = [*alive.values(), *started]
    _write(everything)
    try:
        for p in started:
            _wait_ready(p, say)
    except StackError:
        down(say=lambda _m: None, only=[p.name for p in started])
        raise
    return everything


def _wait_ready(p: Process, say: Say) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with grpc.insecure_channel(p.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not _alive(p.pid):
                raise StackError(f"{p.name} exited while starting:\n{_tail(p.log)}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    say(f"{p.name}: ready at {p.address}")
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise StackError(f"{p.name} did not become ready in {READY_TIMEOUT_SECONDS:.0f} s; see {p.log}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def down(say: Say = print, only: list[str] | None = None) -> int:
    """Stop the services `evo up` started (SIGTERM, then SIGKILL); returns how many."""
    procs = [p for p in running() if only is None or p.name in only]
    for p in procs:
        os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for p in procs:
        while _alive(p.pid) and time.monotonic() < deadline:
            _reap(p.pid)
            time.sleep(0.2)
        if _alive(p.pid):
            os.kill(p.pid, signal.SIGKILL)
            say(f"{p.name}: killed (did not stop within {STOP_TIMEOUT_SECONDS:.0f} s)")
        else:
            say(f"{p.name}: stopped")
    left = [p for p in running() if only is not None and p.name not in only]
    _write(left)
    return len(procs)


def _reap(pid: int) -> None:
    """Collect a child started by this same process (tests run up and down in one)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _write(procs: list[Process]) -> None:
    path = state_file()
    if not procs:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in procs], indent=2))
    tmp.replace(path)
