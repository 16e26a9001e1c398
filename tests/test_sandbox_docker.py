"""The docker sandbox backend, for real: a Docker engine and the sandbox image.

CI starts the engine (images/sandbox/start-docker-engine.sh) and builds the image
(images/sandbox/build-local.sh) first; there these tests fail, never skip, when either
is missing. Elsewhere they skip with the reason.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer.evaluator import Job, Refused, evaluate, judge_run
from services.trainer.sandbox import seccomp
from services.trainer.sandbox.base import GIB, MIB, Limits, RawRun
from services.trainer.sandbox.template import SHM_BYTES, child_env

try:
    import docker
    import docker.errors

    from services.trainer.sandbox.docker import LABEL, DockerBackend, leftover_containers
except ImportError as e:  # pragma: no cover - the trainer extra installs it
    docker = None  # type: ignore[assignment]
    _import_error: Exception | None = e
else:
    _import_error = None

CNN = Path(__file__).resolve().parents[1] / "services/trainer/tasks/seeds/mnist1d/cnn.py"
IN_CI = os.environ.get("CI", "").lower() == "true"
# A model that passes every check, for candidates whose point is elsewhere.
TINY_MODEL = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the docker backend cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def backend() -> Iterator["DockerBackend"]:
    if _import_error is not None:
        _unavailable(f"the docker SDK is not installed ({_import_error}): pip install 'docker>=7'")
    limits = Limits(wall_seconds=120, memory_bytes=2 * GIB, max_processes=64)
    try:
        made = DockerBackend(limits, threads=1)
    except RuntimeError as e:
        _unavailable(str(e))
    yield made
    made.close()


def request(code: str, steps: int = 300, **limits: Any) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        program=pb.Program(code=code),
        task="mnist1d",
        budget=pb.Budget(steps=steps, seed=1),
        limits=pb.Limits(**limits),
    )


def assert_gone(backend: "DockerBackend", container_id: str) -> None:
    """The container is removed, and nothing the backend made is left behind."""
    with pytest.raises(docker.errors.NotFound):
        backend.client.containers.get(container_id)
    assert container_id not in [c.id for c in leftover_containers(backend.client)]


def run_job(backend: "DockerBackend", code: str, **kw: Any) -> tuple[pb.EvaluateResponse, str]:
    """One evaluation (a training and a scoring container); every container it made is gone."""
    started: list[Any] = []

    def sandboxes() -> Any:
        started.append(backend.start())
        return started[-1]

    job = Job.from_request(request(code, **kw), backend.limits)
    response = evaluate(job, sandboxes, backend.threads)
    for sandbox in started:
        assert_gone(backend, sandbox.id)
    return response, started[0].id


def test_sound_cnn_trains_and_scores(backend: "DockerBackend") -> None:
    response, _ = run_job(backend, CNN.read_text(), steps=300, wall_seconds=90)
    assert response.status == common.EVAL_STATUS_OK, (response.message, response.log_tail)
    assert response.metrics.num_params > 0
    assert response.metrics.steps_completed == 300
    assert response.metrics.test_accuracy > 0.3
    assert response.sandbox.backend == "docker"
    assert response.sandbox.isolated
    assert response.sandbox.device == "cpu"


def test_container_is_locked_down(backend: "DockerBackend") -> None:
    """The engine really applied every setting: read back from the running container."""
    sandbox = backend.start()
    try:
        attrs = backend.client.api.inspect_container(sandbox.id)  # type: ignore[attr-defined]
        host, config = attrs["HostConfig"], attrs["Config"]
        assert attrs["State"]["Running"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert "no-new-privileges" in host["SecurityOpt"]
        # The sandbox's own seccomp profile (AF_UNIX sockets only), not the engine's default.
        (profile,) = [o for o in host["SecurityOpt"] if o.startswith("seccomp=")]
        assert json.loads(profile.removeprefix("seccomp=")) == seccomp.docker_profile()
        assert host["ShmSize"] == SHM_BYTES
        assert host["Privileged"] is False
        assert host["PidsLimit"] == backend.limits.max_processes
        assert host["Memory"] == host["MemorySwap"] == backend.limits.memory_bytes
        assert host["NanoCpus"] == 1_000_000_000
        scratch = backend.limits.scratch_bytes
        assert host["Tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={scratch},mode=1777"}
        assert not host["Binds"] and not host.get("Mounts") and not attrs["Mounts"]
        assert not host.get("DeviceRequests")
        ulimits = {u["Name"]: u["Hard"] for u in host["Ulimits"]}
        assert ulimits["nofile"] == backend.limits.open_files
        assert ulimits["fsize"] == backend.limits.file_bytes
        assert ulimits["core"] == 0
        uid = int(config["User"].split(":")[0])
        assert uid >= 61000
        assert config["Labels"][LABEL] == "1"
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env == {**child_env(backend.threads), "EVO_DEVICE": "cpu"}
    finally:
        sandbox.destroy()
    assert_gone(backend, sandbox.id)  # type: ignore[attr-defined]


PROBE = (
    """
import json, os, socket

def can_write(path):
    try:
        with open(os.path.join(path, "probe"), "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    outbound = True
except OSError:
    outbound = False
families = {}
for name, family in (("unix", socket.AF_UNIX), ("inet", socket.AF_INET), ("vsock", 40),
                     ("netlink", 16), ("packet", 17)):
    try:
        socket.socket(family, socket.SOCK_DGRAM if family != 17 else socket.SOCK_RAW).close()
        families[name] = "opened"
    except OSError as e:
        families[name] = e.errno
facts = {
    "uid": os.getuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(),
    "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "write_root": can_write("/"),
    "write_usr": can_write("/usr"),
    "write_etc": can_write("/etc"),
    "write_tmp": can_write("/tmp"),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "families": families,
    "outbound": outbound,
    "docker_sock": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "sock_mounts": [l for l in open("/proc/self/mountinfo") if "docker.sock" in l],
    "env": dict(os.environ),
    "root_listing": sorted(os.listdir("/")),
}
print("PROBE " + json.dumps(facts), flush=True)
"""
    + TINY_MODEL
)


def test_candidate_sees_a_locked_down_container(backend: "DockerBackend") -> None:
    response, _ = run_job(backend, PROBE, steps=10, wall_seconds=60)
    assert response.status == common.EVAL_STATUS_OK, (response.message, response.log_tail)
    line = next(x for x in response.log_tail.splitlines() if x.startswith("PROBE "))
    facts = json.loads(line.removeprefix("PROBE "))
    assert facts["uid"] >= 61000 and facts["gid"] >= 61000 and facts["uid"] != 0
    assert facts["groups"] in ([], [facts["gid"]])
    assert int(facts["cap_eff"], 16) == 0
    assert int(facts["cap_prm"], 16) == 0
    assert int(facts["cap_bnd"], 16) == 0
    assert facts["no_new_privs"] == "1"
    assert not facts["write_root"] and not facts["write_usr"] and not facts["write_etc"]
    assert facts["write_tmp"]
    assert facts["interfaces"] == ["lo"]
    assert not facts["outbound"]
    eafnosupport = 97
    assert facts["families"] == {
        "unix": "opened", "inet": eafnosupport, "vsock": eafnosupport,
        "netlink": eafnosupport, "packet": eafnosupport,
    }  # fmt: skip
    assert facts["docker_sock"] == [] and facts["sock_mounts"] == []
    # Exactly the child's environment; the engine adds HOSTNAME, which names nothing real.
    assert facts["env"].pop("HOSTNAME") == "sandbox"
    assert facts["env"] == {**child_env(backend.threads), "EVO_DEVICE": "cpu"}
    # Nothing of the host's root: no /root secrets beyond the interpreter, no /var, no /home.
    assert not {"home", "var", "mnt", "srv", "opt"} & set(facts["root_listing"])


def test_infinite_loop_times_out_and_the_container_goes(backend: "DockerBackend") -> None:
    response, _ = run_job(backend, "while True:\n    pass\n" + TINY_MODEL, wall_seconds=10)
    assert response.status == common.EVAL_STATUS_TIMEOUT, response.message
    assert "10 s wall-clock" in response.message
    assert response.wall_seconds < 30


MEMORY_BOMB = (
    """
import os, time

# Each process stays under its own address-space limit; together they exceed the
# container's memory, so only the memory cgroup can stop them.
for _ in range(4):
    if os.fork() == 0:
        hold = b"\\x01" * (240 << 20)
        time.sleep(600)
        os._exit(0)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")  # raising one's own score needs no privilege: the killer picks us
chunks = []
while True:
    try:
        chunks.append(b"\\x01" * (32 << 20))
    except MemoryError:
        time.sleep(0.1)
"""
    + TINY_MODEL
)


def test_memory_bomb_is_killed_as_oom(backend: "DockerBackend") -> None:
    sandbox = backend.start()
    job = Job.from_request(
        request(MEMORY_BOMB, steps=10, wall_seconds=60, memory_bytes=1 * GIB), backend.limits
    )
    try:
        raw = sandbox.run(job.train_job(backend.threads), job.limits)
    finally:
        sandbox.destroy()
    assert_gone(backend, sandbox.id)  # type: ignore[attr-defined]
    with pytest.raises(Refused) as refused:
        judge_run(job, raw, job.limits)
    response = refused.value
    assert not raw.timed_out, raw.log_tail
    assert raw.oom_killed, (raw, raw.log_tail)  # type: ignore[attr-defined]
    assert raw.signal_name == "SIGKILL"
    if "oom_killed" in RawRun.__dataclass_fields__:
        assert response.status == common.EVAL_STATUS_OOM, response.message
    else:  # until the judge reads the flag it can only say SIGKILL
        assert response.status == common.EVAL_STATUS_CRASHED, response.message
    assert "memory" in response.message.lower() or "OOM" in response.message


def test_output_flood_is_cut_off_with_a_bounded_tail(backend: "DockerBackend") -> None:
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536 + '\\n')\n" + TINY_MODEL
    response, _ = run_job(backend, flood, wall_seconds=60, max_output_bytes=4 * MIB)
    assert response.status == common.EVAL_STATUS_CRASHED, response.message
    assert "output limit" in response.message
    assert 0 < len(response.log_tail) <= Limits().log_tail_bytes
    assert response.wall_seconds < 30


def test_gpus_are_requested_only_when_configured(backend: "DockerBackend") -> None:
    """No GPU here: check what would be asked of the engine, without starting a container.
    A sandbox gets its slot's GPU only, by UUID (never count=-1, every GPU)."""
    from services.trainer.sandbox.gpu import Gpu

    assert "device_requests" not in backend.container_options(61000)[1]
    gpu = Gpu(1, "NVIDIA H200", "GPU-0f3c")
    with_gpu = DockerBackend(backend.limits, client=backend.client, gpu=gpu)
    create, host = with_gpu.container_options(61000)
    (request,) = host["device_requests"]
    assert request["DeviceIDs"] == ["GPU-0f3c"] and request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0
    assert create["environment"]["EVO_DEVICE"] == "cuda"
    assert create["environment"]["EVO_MEMORY_RLIMIT"] == "data"


def test_missing_image_says_how_to_build_it(backend: "DockerBackend") -> None:
    with pytest.raises(RuntimeError, match=r"build-local\.sh"):
        DockerBackend(backend.limits, image="evo-sandbox:no-such-tag", client=backend.client)


def test_unreachable_engine_says_how_to_start_it(tmp_path: Path) -> None:
    if docker is None:
        pytest.skip("the docker SDK is not installed")
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")
    with pytest.raises(RuntimeError, match="DOCKER_HOST"):
        DockerBackend(Limits(), client=client)


def test_a_clrs_triplet_function_trains_in_the_container(backend: "DockerBackend") -> None:
    """The image carries the CLRS runner (JAX, Haiku, dm-clrs, no TensorFlow)."""
    from services.trainer import tasks

    if not tasks.clrs_available():
        _unavailable("dm-clrs is not installed: make install EXTRAS=...,clrs")
    # dm-clrs's own triplet signature (the paper's seeds are tests/test_clrs.py's).
    seed = Path(__file__).resolve().parent.parent / "services/trainer/tasks/seeds/clrs_dmclrs"
    job = Job.from_request(
        pb.EvaluateRequest(
            program=pb.Program(code=(seed / "triplet_gmpnn.py").read_text()),
            task="clrs/bfs:train=48,val=16,test=16,length=8,test_length=12,hidden=16,batch=8,"
            "triplet=dmclrs,optimizer=adam",
            budget=pb.Budget(steps=40),
        ),
        Limits(wall_seconds=120, memory_bytes=4 * GIB, max_processes=64),
    )
    response = evaluate(job, backend.start, backend.threads)
    assert response.status == common.EVAL_STATUS_OK, response
    assert response.metrics.best_val_accuracy > 0.6
    assert response.sandbox.backend == "docker"


# --- gVisor: the same container under runsc, where the engine has it ------------------

KERNEL_PROBE = "import os\nprint('KERNEL', os.uname().release, flush=True)\n" + TINY_MODEL


@pytest.fixture(scope="module")
def runsc_backend(backend: "DockerBackend") -> Iterator["DockerBackend"]:
    runtimes = backend.client.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        if os.environ.get("EVO_SANDBOX_RUNTIME") == "runsc":
            pytest.fail("EVO_SANDBOX_RUNTIME=runsc but the engine has no runsc runtime")
        pytest.skip(
            "the Docker engine has no runsc runtime (docs/security.md: apt-get install runsc, "
            "add it to /etc/docker/daemon.json, kill -HUP dockerd)"
        )
    # runsc cannot lower a running container's memory limit per job: start it at 1 GiB.
    limits = Limits(wall_seconds=120, memory_bytes=1 * GIB, max_processes=64)
    yield DockerBackend(limits, threads=1, client=backend.client, runtime="runsc")


def test_an_unknown_runtime_says_how_to_add_it(backend: "DockerBackend") -> None:
    with pytest.raises(RuntimeError, match=r"daemon\.json"):
        DockerBackend(backend.limits, client=backend.client, runtime="no-such-runtime")


def test_runsc_runs_the_candidate_on_gvisors_kernel(runsc_backend: "DockerBackend") -> None:
    sandbox = runsc_backend.start()
    try:
        attrs = runsc_backend.client.api.inspect_container(sandbox.id)  # type: ignore[attr-defined]
        assert attrs["HostConfig"]["Runtime"] == "runsc"
    finally:
        sandbox.destroy()
    response, _ = run_job(runsc_backend, KERNEL_PROBE, steps=10, wall_seconds=90)
    assert response.status == common.EVAL_STATUS_OK, (response.message, response.log_tail)
    kernel = next(x for x in response.log_tail.splitlines() if x.startswith("KERNEL "))
    # gVisor's Sentry answers system calls itself and names its own kernel version.
    assert kernel.split()[1] != os.uname().release


def test_runsc_trains_and_scores_the_cnn(runsc_backend: "DockerBackend") -> None:
    response, _ = run_job(runsc_backend, CNN.read_text(), steps=300, wall_seconds=120)
    assert response.status == common.EVAL_STATUS_OK, (response.message, response.log_tail)
    assert response.metrics.steps_completed == 300 and response.metrics.test_accuracy > 0.3


def test_runsc_contains_a_memory_bomb(runsc_backend: "DockerBackend") -> None:
    response, _ = run_job(
        runsc_backend, MEMORY_BOMB, steps=10, wall_seconds=60, memory_bytes=1 * GIB
    )
    assert response.status in (common.EVAL_STATUS_OOM, common.EVAL_STATUS_CRASHED), response
