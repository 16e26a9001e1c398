"""Shared by the reliability tests (tests/test_reliability_*.py; docs/reliability.md).

Real services, real faults: a service under fault runs as its own `evo serve` process
(killed with real signals, restarted on the same port); the others run in the test's
process, where a `Gate` can hold one call while the test acts (kills the controller, drops
a database connection). A search's lineage is read back in a form that does not depend on
row ids, so a search that went through faults can be compared with an uninterrupted one.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import grpc
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from evo.v1 import trainer_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.clients import Lineage, Proposer, Trainers
from controller.config import SearchConfig, parse
from controller.progress import Progress
from controller.search import Search
from services.lineage import server as lineage_server
from services.lineage.rdb import RDBStorage
from services.proposer import server as proposer_server
from services.proposer.backends.base import Info, Novelty, Sampling, TuneResult, TuneSettings
from services.proposer.backends.tgi import TGIBackend
from services.trainer import server as trainer_server
from services.trainer.sandbox.base import Limits
from tests.standins.tgi import TGIStandIn

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
T = TypeVar("T")

# The search most reliability tests run: EvoPrompting with prompt-tuning, small enough
# for CI (4 seeds, 2 rounds of 2 prompts x 2 samples, 40 training steps each).
LM_SEARCH = """\
name: reliability
method: evoprompting
seed: 11
evolution: {rounds: 2, prompts_per_round: 2, samples_per_prompt: 2, population_size: 3,
            alpha: 1.0}
training: {steps: 40, wall_seconds: 60}
tuning: {num_virtual_tokens: 4, epochs: 1, batch_size: 2}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T], what: str, timeout: float = 120.0, interval: float = 0.1
) -> T:
    """Poll `check` until it returns something true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def search_config(text: str, **services: Any) -> SearchConfig:
    config = parse(text, "reliability.yaml")
    for key, value in services.items():
        setattr(config.services, key, value)
    return config


def config_yaml(config: SearchConfig) -> str:
    """A config as the YAML file `evo search start` reads (JSON is YAML)."""
    return json.dumps(dataclasses.asdict(config))


def health_status(address: str, timeout: float = 2.0) -> int | None:
    """The service's overall health, or None when nothing answers."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return int(reply.status)


SERVING = health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- service processes


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, state)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return found


def descendants(pid: int) -> set[int]:
    """The processes started under `pid`, however deep (sandboxes in their own sessions
    included)."""
    table = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies are not)."""
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}


class ServiceProcess:
    """`evo serve NAME ARGS --port P` as a child in its own process group.

    `kill` signals the service process alone (its sandboxes must die with it); `close`
    ends it, what it started and its process group.
    """

    def __init__(self, name: str, args: list[str], log_dir: Path, port: int = 0) -> None:
        self.name = name
        self.args = args
        self.port = port or free_port()
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgids: list[int] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "ServiceProcess":
        argv = [sys.executable, "-m", "controller.cli", "serve", self.name]
        argv += ["--port", str(self.port), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        self.pgids.append(self.proc.pid)
        proc = self.proc
        wait_until(
            lambda: proc.poll() is not None or health_status(self.address) == SERVING,
            f"{self.name} to serve on {self.address}",
            timeout,
            interval=0.2,
        )
        if proc.poll() is not None:
            raise AssertionError(f"{self.name} exited while starting:\n{self.log()}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def descendants(self) -> set[int]:
        assert self.proc is not None
        return descendants(self.proc.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            children = self.descendants()
            self.proc.kill()
            self.proc.wait(30)
            for pid in running(children):
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for pgid in self.pgids:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


@contextmanager
def service_processes(log_dir: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """A factory of ServiceProcess; every one it made is ended when the block exits."""
    made: list[ServiceProcess] = []

    def make(name: str, args: list[str], port: int = 0) -> ServiceProcess:
        service = ServiceProcess(name, args, log_dir, port)
        made.append(service)
        return service

    try:
        yield make
    finally:
        for service in made:
            service.close()


# ---------------------------------------------------------------- in-process services


class Gate:
    """Once armed, lets `skip` calls through and holds the next one until released."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._skip = 0
        self.hit = threading.Event()
        self._release = threading.Event()

    def arm(self, skip: int = 0) -> None:
        with self._lock:
            self._armed = True
            self._skip = skip
            self.hit.clear()
            self._release.clear()

    def passing(self) -> None:
        with self._lock:
            if not self._armed:
                return
            if self._skip:
                self._skip -= 1
                return
            self._armed = False
        self.hit.set()
        self._release.wait(120)

    def release(self) -> None:
        with self._lock:
            self._armed = False
        self._release.set()


class TunableStandIn(TGIBackend):
    """The TGI stand-in behind a backend that can also "tune" a soft prompt.

    Real prompt-tuning needs the hf backend and minutes of CPU a round; this one returns
    an adapter id computed from the training data (deterministic, like a seeded tuning)
    and registers it with the stand-in, whose samples then change as a tuned model's
    would. Gates hold a Generate or a TrainSoftPrompt call while the test acts.
    """

    def __init__(self, tgi: TGIStandIn) -> None:
        super().__init__(tgi.url, timeout=10)
        self.tgi = tgi
        self.generate_gate = Gate()
        self.tune_gate = Gate()
        self.calls: Counter[str] = Counter()
        self.novelty: list[Novelty | None] = []  # what each Generate call was told to avoid
        self._lock = threading.Lock()

    def info(self) -> Info:
        found = super().info()
        return dataclasses.replace(
            found,
            capabilities=dataclasses.replace(found.capabilities, prompt_tuning=True),
            adapter_ids=list(self.adapters),
        )

    def generate(
        self, prompt: str, n: int, sampling: Sampling, adapter_id: str = "", cancelled=None
    ):  # type: ignore[no-untyped-def]
        with self._lock:
            self.calls["generate"] += 1
            self.novelty.append(sampling.novelty)
        self.generate_gate.passing()
        return super().generate(prompt, n, sampling, adapter_id, cancelled)

    def train_soft_prompt(self, examples: list[str], settings: TuneSettings) -> TuneResult:
        with self._lock:
            self.calls["tune"] += 1
        self.tune_gate.passing()
        key = json.dumps([examples, dataclasses.asdict(settings)], sort_keys=True)
        adapter = "soft-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        with self._lock:
            if adapter not in self.adapters:
                self.adapters.append(adapter)
                self.tgi.adapters.add(adapter)
        loss = round(1.0 / (1 + len(examples)), 6)
        return TuneResult(adapter, [loss] * settings.epochs, len(examples), 0.01)


@dataclasses.dataclass
class InProcessProposer:
    address: str
    backend: TunableStandIn


@contextmanager
def proposer_in_process() -> Iterator[InProcessProposer]:
    with TGIStandIn() as tgi:
        backend = TunableStandIn(tgi)
        service = proposer_server.start(backend, "127.0.0.1", 0)
        try:
            yield InProcessProposer(f"127.0.0.1:{service.port}", backend)
        finally:
            service.stop(grace=1)
            backend.close()


class CountingTrainer(trainer_server.Trainer):
    """The real trainer, counting what it was asked: finished evaluations per request id,
    busy refusals, and evaluations in flight."""

    def __init__(self, config: trainer_server.TrainerConfig) -> None:
        super().__init__(config)
        self.finished: Counter[str] = Counter()
        self.refused = 0
        self.in_flight = 0
        self._count_lock = threading.Lock()

    def in_flight_now(self) -> int:
        with self._count_lock:
            return self.in_flight

    def evaluate(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self._count_lock:
            self.in_flight += 1
        try:
            response = super().evaluate(request, *args, **kwargs)
        except trainer_server.Busy:
            with self._count_lock:
                self.refused += 1
            raise
        finally:
            with self._count_lock:
                self.in_flight -= 1
        with self._count_lock:
            self.finished[request.request_id] += 1
        return response


@dataclasses.dataclass
class InProcessTrainer:
    address: str
    trainer: CountingTrainer


@contextmanager
def trainer_in_process(slots: int = 1, max_queue: int = 16) -> Iterator[InProcessTrainer]:
    trainer = CountingTrainer(
        trainer_server.TrainerConfig(
            backend="bwrap",
            slots=slots,
            warm=slots,
            max_queue=max_queue,
            limits=Limits(wall_seconds=120, memory_bytes=2 * GIB),
        )
    )
    service = trainer_server.start(trainer, "127.0.0.1", 0)
    try:
        yield InProcessTrainer(f"127.0.0.1:{service.port}", trainer)
    finally:
        service.stop(grace=1)
        trainer.close()


@dataclasses.dataclass
class InProcessLineage:
    address: str
    storage: RDBStorage
    stub: pb_grpc.LineageStub
    round_finished_gate: Gate


@contextmanager
def lineage_in_process(url: str) -> Iterator[InProcessLineage]:
    """The store on `url`; its gate holds the reply to a round's FINISHED record (round 1
    or later), after the write: the moment between two rounds."""
    storage = RDBStorage(url)
    gate = Gate()
    record_round = storage.record_round

    def gated(req: pb.RecordRoundRequest) -> pb.Round:
        stored = record_round(req)
        if req.state == pb.ROUND_STATE_FINISHED and req.round_index >= 1:
            gate.passing()
        return stored

    storage.record_round = gated  # type: ignore[method-assign]
    service = lineage_server.start(storage, "127.0.0.1", 0)
    address = f"127.0.0.1:{service.port}"
    try:
        with grpc.insecure_channel(address) as channel:
            yield InProcessLineage(address, storage, pb_grpc.LineageStub(channel), gate)
    finally:
        gate.release()
        service.stop(grace=1)
        storage.close()


# ---------------------------------------------------------------- a controller in a thread


class ControllerThread:
    """A search run by the real `Search` in a thread of the test, its INFO log kept.

    For tests whose fault is elsewhere (a service, a connection): the log shows the
    controller's retries. `close` asks it to stop and waits a while.
    """

    def __init__(self, config: SearchConfig, search_id: int = 0) -> None:
        self.config = config
        self.lineage = Lineage(config.services.lineage)
        if not search_id:
            search_id = self.lineage(
                "CreateSearch",
                pb.CreateSearchRequest(
                    name=config.name,
                    task=config.task,
                    method=config.method,
                    config_json=config.to_json(),
                ),
            ).search.id
        self.search_id = search_id
        self.stop = threading.Event()
        self.out = io.StringIO()
        self.records: list[logging.LogRecord] = []
        self.top: list[pb.Candidate] = []
        self.error: BaseException | None = None
        self._handler = _ListHandler(self.records)
        self._logger = logging.getLogger("controller")
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        self.thread = threading.Thread(target=self._run, daemon=True, name="controller")
        self.thread.start()

    def _run(self) -> None:
        config = self.config
        trainers = Trainers(config.services.trainers)
        proposer = Proposer(config.services.proposer) if config.uses_language_model else None
        try:
            with Progress(self.search_id, stream=self.out, live=False) as progress:
                search = Search(
                    config, self.search_id, self.lineage, trainers, proposer, progress, self.stop
                )
                self.top = search.run()
        except BaseException as e:
            self.error = e
        finally:
            trainers.close()
            if proposer is not None:
                proposer.close()

    def messages(self, contains: str) -> list[str]:
        return [m for r in list(self.records) if contains in (m := r.getMessage())]

    def wait(self, timeout: float = 300.0) -> list[pb.Candidate]:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the search did not finish in {timeout:.0f} s:\n{self.log()}")
        if self.error is not None:
            raise AssertionError(f"the search failed: {self.error!r}\n{self.log()}")
        return self.top

    def log(self) -> str:
        lines = [r.getMessage() for r in self.records[-40:]]
        return self.out.getvalue()[-4000:] + "\n" + "\n".join(lines)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
        self.lineage.close()


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# ---------------------------------------------------------------- a controller process


def evo(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`evo ARGS` (the controller's command line) as a child process, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )


# ---------------------------------------------------------------- comparing lineages


def candidates(stub: pb_grpc.LineageStub, search_id: int) -> list[pb.Candidate]:
    found: list[pb.Candidate] = []
    token = ""
    while True:
        page = stub.ListCandidates(
            pb.ListCandidatesRequest(
                search_id=search_id, page_size=1000, page_token=token, include_code=True
            ),
            timeout=30,
        )
        found.extend(page.candidates)
        token = page.next_page_token
        if not token:
            return found


def snapshot(stub: pb_grpc.LineageStub, search_id: int) -> dict[str, Any]:
    """A search's whole lineage without row ids: candidates are named by (round, prompt,
    sample), parents and duplicates by those names, so two searches compare as equal
    exactly when they made the same prompts, children, states and scores."""
    found = candidates(stub, search_id)
    prompts = {
        pid: stub.GetPrompt(pb.GetPromptRequest(prompt_id=pid), timeout=30)
        for pid in sorted({c.prompt_id for c in found if c.prompt_id})
    }
    names: dict[int, tuple[int, int, int]] = {}
    for c in found:
        prompt = prompts[c.prompt_id].prompt_index if c.prompt_id else -1
        names[c.id] = (c.round_index, prompt, c.sample_index)
    assert len(set(names.values())) == len(names), "one sample was recorded twice"
    rows = []
    for c in found:
        m, ev = c.evaluation.metrics, c.evaluation
        s = c.proposer.sampling
        rows.append(
            {
                "name": names[c.id],
                "origin": pb.CandidateOrigin.Name(c.origin),
                "label": c.name,
                "code_hash": c.code_hash,
                "state": pb.CandidateState.Name(c.state),
                "parents": [names[p] for p in c.parent_ids],
                "duplicate_of": names.get(c.duplicate_of_id),
                "adapter_id": c.adapter_id,
                "sampling": [s.temperature, s.top_p, s.max_new_tokens, s.seed, list(s.stop)],
                "evaluation": [
                    ev.status,
                    m.num_params,
                    m.best_val_error,
                    m.best_val_accuracy,
                    m.test_accuracy,
                    m.steps_completed,
                    [(p.step, p.train_loss, p.val_accuracy) for p in m.val_curve],
                    ev.budget_steps,
                    ev.budget_seed,
                ]
                if c.HasField("evaluation")
                else None,
                "fitness": c.fitness if c.HasField("fitness") else None,
            }
        )
    rounds = stub.ListRounds(pb.ListRoundsRequest(search_id=search_id), timeout=30).rounds
    search = stub.GetSearch(pb.GetSearchRequest(search_id=search_id), timeout=30)
    return {
        "state": pb.SearchState.Name(search.state),
        "rounds": [
            (r.round_index, pb.RoundState.Name(r.state), r.adapter_id, r.tuning_loss)
            for r in rounds
        ],
        "prompts": [
            (
                p.round_index,
                p.prompt_index,
                hashlib.sha256(p.text.encode()).hexdigest(),
                [names[i] for i in p.parent_ids],
                p.temperature,
                p.target_json,
            )
            for p in prompts.values()
        ],
        "candidates": sorted(rows, key=lambda r: r["name"]),
    }


def differences(got: dict[str, Any], want: dict[str, Any]) -> str:
    """What differs, candidate by candidate, in a few lines ('' when equal)."""
    lines = []
    for key in ("state", "rounds", "prompts"):
        if got[key] != want[key]:
            lines.append(f"{key}: got {got[key]!r}\n  want {want[key]!r}")
    mine = {r["name"]: r for r in got["candidates"]}
    theirs = {r["name"]: r for r in want["candidates"]}
    for name in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(name), theirs.get(name)
        if a != b:
            fields = sorted(k for k in (a or b or {}) if (a or {}).get(k) != (b or {}).get(k))
            lines.append(f"candidate {name}: {fields}: got {a!r}\n  want {b!r}")
    return "\n".join(lines[:12])


_references: dict[str, dict[str, Any]] = {}
_references_lock = threading.Lock()


def reference(config: SearchConfig, stub: pb_grpc.LineageStub) -> dict[str, Any]:
    """The lineage of an uninterrupted run of `config` through the services it names,
    computed once per test session for each config (the services are deterministic)."""
    plain = dataclasses.replace(config, services=dataclasses.replace(config.services))
    plain.services.lineage = plain.services.proposer = ""
    plain.services.trainers = []
    key = plain.to_json()
    with _references_lock:
        if key not in _references:
            run = ControllerThread(config)
            try:
                run.wait(600)
                _references[key] = snapshot(stub, run.search_id)
            finally:
                run.close()
        return _references[key]


def trainer_capacity(address: str) -> trainer_pb2.Capacity:
    from evo.v1 import trainer_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return trainer_pb2_grpc.TrainerStub(channel).GetCapacity(
            trainer_pb2.GetCapacityRequest(), timeout=5
        )


@dataclasses.dataclass
class Stack:
    """Every service in the test's process: the store, one bwrap trainer, the proposer."""

    lineage: InProcessLineage
    trainer: InProcessTrainer
    proposer: InProcessProposer

    def config(self, text: str = LM_SEARCH) -> SearchConfig:
        return search_config(
            text,
            lineage=self.lineage.address,
            trainers=[self.trainer.address],
            proposer=self.proposer.address,
        )


@contextmanager
def stack_in_process(db_url: str) -> Iterator[Stack]:
    with (
        lineage_in_process(db_url) as lineage,
        trainer_in_process() as trainer,
        proposer_in_process() as proposer,
    ):
        yield Stack(lineage, trainer, proposer)
