"""The images, for real: the trainer's sandbox in a container, and a search across containers.

The images are built once per session with images/build.sh (offline, from evo-base and
the wheelhouse; cached by Docker, so a rebuild without changes takes seconds). Then:

- the trainer image runs `evo sandbox run` of the CNN seed under the settings of its
  Kubernetes pod (non-root, read-only root, no capabilities, no privilege escalation,
  the Localhost seccomp profile, an unmasked /proc), and refuses to start, saying why,
  without the profile or with a masked /proc;
- every image is non-root, has no compiler, and stays within its size;
- the whole system runs on a private (internal) Docker network: the lineage store
  (SQLite on a volume, migrated first as the init container does), a TGI stand-in, the
  proposal service on its tgi backend, two trainers behind one DNS name (as the headless
  Service), and the controller running `evo search start` on a small search, with the
  manifests' own arguments, environment and gRPC health probes; then the lineage in the
  database is checked.

Without a Docker engine these tests skip and say why, except with CI=true, where they fail.
"""

import json
import os
import shutil
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
PROFILE = REPO / "images/trainer/evo-trainer-bwrap.json"
CNN = REPO / "services/trainer/tasks/seeds/mnist1d/cnn.py"
IN_CI = os.environ.get("CI", "").lower() == "true"
TAG = os.environ.get("EVO_IMAGE_TAG", "dev")
SERVICES = ["lineage", "controller", "trainer", "lm"]
# Generous ceilings (MiB): a guard against an image suddenly doubling, not a target.
MAX_MIB = {"lineage": 300, "controller": 450, "trainer": 1300, "lm": 1400}
BUILD_SECONDS = 1500
# What the pods' securityContexts say, in docker's words.
RESTRICTED = [
    "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
    "--user=10001:10001", "--memory=3g", "--pids-limit=512",
]  # fmt: skip
TRAINER_POD = [
    *RESTRICTED, f"--security-opt=seccomp={PROFILE}", "--security-opt=systempaths=unconfined",
    "--tmpfs=/tmp:rw,size=1g",
]  # fmt: skip
HEALTH = (
    "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
    "s = g.HealthStub(grpc.insecure_channel('127.0.0.1:{port}')).Check("
    "h.HealthCheckRequest(), timeout=3).status; sys.exit(0 if s == 1 else 1)"
)
# The TGI stand-in of tests/standins, listening on the network instead of loopback.
TGI_STANDIN = textwrap.dedent(
    """
    import socket
    from tests.standins.tgi import TGIStandIn
    server = TGIStandIn()
    server.socket.close()
    server.socket = socket.socket(server.address_family, server.socket_type)
    server.server_address = ("0.0.0.0", 8080)
    server.server_bind()
    server.server_activate()
    server.serve_forever()
    """
)
SEARCH = {
    "name": "containers",
    "task": "mnist1d",
    "method": "evoprompting-no-tuning",
    "seed": 3,
    "evolution": {
        "rounds": 2,
        "prompts_per_round": 2,
        "samples_per_prompt": 2,
        "parents_per_prompt": 2,
        "population_size": 3,
    },
    "training": {"steps": 100, "wall_seconds": 120},
    "proposer": {"max_new_tokens": 200},
}


def image(service: str) -> str:
    return f"evo-{service}:{TAG}"


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}... failed:\n{done.stderr[-3000:]}")
    return done.stdout


def docker_ready() -> str:
    """Why a Docker engine cannot be used here, or '' if it can."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"no Docker engine answers (images/sandbox/start-docker-engine.sh): {done.stderr}"
    return ""


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The four service images, built (or found up to date) once per session."""
    if why := docker_ready():
        if IN_CI:
            pytest.fail(f"CI=true but the container tests cannot run: {why}", pytrace=False)
        pytest.skip(why)
    env = {**os.environ, "TAG": TAG, "REGISTRY": ""}
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO / "images/build.sh"), *SERVICES],
        capture_output=True, text=True, timeout=BUILD_SECONDS, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, f"images/build.sh failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    print(f"images built or found in {time.monotonic() - started:.0f} s:\n{done.stdout}")
    return {s: image(s) for s in SERVICES}


def sandbox_run(trainer_image: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "run", "--rm", "--network=none", *options,
         f"--volume={CNN}:/work/cnn.py:ro", trainer_image,
         "sandbox", "run", "/work/cnn.py", "--task", "mnist1d", "--steps", "200", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# ----------------------------------------------------------------- the trainer image


@pytest.mark.timeout(BUILD_SECONDS + 300)
def test_the_trainer_image_sandboxes_a_candidate_under_its_pod_settings(
    images: dict[str, str],
) -> None:
    done = sandbox_run(images["trainer"], *TRAINER_POD)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout)
    assert result["status"] == "OK", result
    assert result["sandbox"]["backend"] == "bwrap" and result["sandbox"]["isolated"] is True
    assert int(result["metrics"]["num_params"]) == 5210
    assert result["metrics"]["best_val_accuracy"] > 0.3, "200 steps learn something"


@pytest.mark.timeout(BUILD_SECONDS + 300)
def test_the_trainer_refuses_to_start_without_what_its_sandbox_needs(
    images: dict[str, str],
) -> None:
    # The runtime's default seccomp profile: no user namespaces for a non-root process.
    without_profile = [o for o in TRAINER_POD if "seccomp=" not in o]
    done = sandbox_run(images["trainer"], *without_profile)
    assert done.returncode == 78, done.stderr
    assert "user namespaces are blocked" in done.stderr
    assert "evo-trainer-bwrap.json" in done.stderr
    # The profile, but /proc masked as by default: the sandbox cannot mount its own.
    masked = [o for o in TRAINER_POD if "systempaths" not in o]
    done = sandbox_run(images["trainer"], *masked)
    assert done.returncode == 78, done.stderr
    assert "procMount: Unmasked" in done.stderr
    # The service itself refuses to start the same way, before serving anything.
    served = subprocess.run(
        ["docker", "run", "--rm", "--network=none", *without_profile, images["trainer"]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 78 and "cannot start in this container" in served.stderr


@pytest.mark.timeout(BUILD_SECONDS + 300)
def test_images_are_non_root_without_compilers_and_small(images: dict[str, str]) -> None:
    for service, name in images.items():
        (info,) = json.loads(docker("image", "inspect", name))
        assert info["Config"]["User"] == "10001:10001", name
        mib = info["Size"] / 2**20
        assert mib < MAX_MIB[service], f"{name} is {mib:.0f} MiB"
        found = docker(
            "run", "--rm", "--network=none", "--entrypoint=sh", name, "-c",
            "for c in gcc cc c++ g++ clang make ld pip; do command -v $c; done; id -u",
        )  # fmt: skip
        assert found.split() == ["10001"], f"{name} has {found.split()[:-1]} or runs as root"


# ----------------------------------------------------------------- the system on a network


def manifest(path: str, kind: str, name: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in k8s/{path}")


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    return spec["containers"][0]


def grpc_port(c: dict[str, Any]) -> int:
    ports = {c["readinessProbe"]["grpc"]["port"], c["livenessProbe"]["grpc"]["port"]}
    assert len(ports) == 1
    return ports.pop()


class Network:
    """Containers on one internal network, all removed at the end, also on failure."""

    def __init__(self) -> None:
        self.run_id = f"evo-e2e-{uuid.uuid4().hex[:8]}"
        self.label = f"evo.e2e={self.run_id}"
        self.names: list[str] = []

    def __enter__(self) -> "Network":
        docker("network", "create", "--internal", "--label", self.label, self.run_id)
        docker("volume", "create", "--label", self.label, f"{self.run_id}-lineage")
        return self

    def __exit__(self, *exc: object) -> None:
        ids = docker("ps", "-aq", "--filter", f"label={self.label}", check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        docker("network", "rm", self.run_id, check=False)
        docker("volume", "rm", "-f", f"{self.run_id}-lineage", check=False)

    def start(
        self,
        name: str,
        aliases: list[str],
        options: list[str],
        image_and_args: list[str],
        health: str,
    ) -> None:
        docker(
            "run", "--detach", f"--name={self.run_id}-{name}", f"--hostname={name}",
            f"--label={self.label}", f"--network={self.run_id}",
            *[f"--network-alias={a}" for a in aliases],
            f"--health-cmd={health}", "--health-interval=2s", "--health-timeout=5s",
            "--health-retries=3", "--health-start-period=180s",
            *options, *image_and_args,
        )  # fmt: skip
        self.names.append(name)

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.names)
        while waiting:
            for name in list(waiting):
                state = json.loads(docker("inspect", "-f", "{{json .State}}", self.full(name)))
                if state.get("Health", {}).get("Status") == "healthy":
                    waiting.remove(name)
                elif not state["Running"] or time.monotonic() > deadline:
                    raise AssertionError(f"{name} did not become healthy:\n{self.logs(name)}")
            time.sleep(1)

    def full(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def logs(self, name: str) -> str:
        done = subprocess.run(
            ["docker", "logs", "--tail", "40", self.full(name)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout + done.stderr

    def all_logs(self) -> str:
        return "\n".join(f"--- {n}:\n{self.logs(n)}" for n in self.names)


@pytest.fixture
def network(images: dict[str, str]) -> Iterator[Network]:
    with Network() as net:
        yield net


def health(port: int) -> str:
    return f'python -c "{HEALTH.format(port=port)}"'


LINEAGE_DUMP = """
import json, sqlite3
db = sqlite3.connect('/var/lib/evo/lineage.db')
db.row_factory = sqlite3.Row
rows = lambda sql: [dict(r) for r in db.execute(sql)]
print(json.dumps({
    'searches': rows('SELECT id, state, message FROM searches'),
    'candidates': rows('SELECT id, search_id, round_index, origin, state, num_params, '
                       'best_val_error, fitness, prompt_id, sample_index FROM candidates'),
    'edges': rows('SELECT child_id, parent_id FROM candidate_parents'),
    'evaluations': rows('SELECT candidate_id, status, trainer_id, sandbox_backend '
                        'FROM evaluations'),
}))
"""


@pytest.mark.timeout(BUILD_SECONDS + 900)
def test_a_search_runs_across_containers_as_in_the_cluster(
    images: dict[str, str], network: Network, tmp_path: Path
) -> None:
    started = time.monotonic()
    volume = f"{network.run_id}-lineage:/var/lib/evo"
    sqlite = "EVO_DB_URL=sqlite:////var/lib/evo/lineage.db"  # PostgreSQL in the cluster

    # The lineage store: the init container's migration, then the server (--no-migrate).
    lineage = container_of(manifest("base/lineage.yaml", "Deployment", "lineage"))
    docker(
        "run", "--rm", f"--network={network.run_id}", *RESTRICTED, "--tmpfs=/tmp",
        f"--volume={volume}", f"--env={sqlite}", images["lineage"], "db", "upgrade",
    )  # fmt: skip
    network.start(
        "lineage", ["lineage.evo.svc.cluster.local"],
        [*RESTRICTED, "--tmpfs=/tmp", f"--volume={volume}", f"--env={sqlite}"],
        [images["lineage"], *lineage["args"]], health(grpc_port(lineage)),
    )  # fmt: skip

    # TGI's stand-in, and the proposal service in front of it (the gpu-tgi overlay's args).
    network.start(
        "tgi", ["tgi.evo.svc.cluster.local"],
        [*RESTRICTED, f"--volume={REPO / 'tests'}:/src/tests:ro", "--env=PYTHONPATH=/src",
         "--entrypoint=python"],
        [images["controller"], "-c", TGI_STANDIN],
        "python -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health')\"",
    )  # fmt: skip
    proposer = container_of(manifest("components/tgi/proposer.yaml", "Deployment", "proposer"))
    probes = container_of(manifest("base/proposer.yaml", "Deployment", "proposer"))
    network.start(
        "proposer", ["proposer.evo.svc.cluster.local"],
        [*RESTRICTED, "--tmpfs=/tmp"],
        [images["lm"], *proposer["args"]], health(grpc_port(probes)),
    )  # fmt: skip

    # Two trainers under one name, as the headless Service; one slot each on 2 cores.
    trainer = container_of(manifest("base/trainer.yaml", "Deployment", "trainer"))
    args = [a if not a.startswith("--slots=") else "--slots=1" for a in trainer["args"]]
    for n in (1, 2):
        network.start(
            f"trainer-{n}", ["trainer.evo.svc.cluster.local"], TRAINER_POD,
            [images["trainer"], *args], health(grpc_port(trainer)),
        )  # fmt: skip
    network.wait_healthy()
    up = time.monotonic() - started

    # The controller Job: its arguments and environment, the search from a mounted file.
    job = manifest("base/controller.yaml", "Job", "evo-search")
    controller = container_of(job)
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump(SEARCH))
    search.chmod(0o644)
    env = [f"--env={e['name']}={e['value']}" for e in controller["env"]]
    done = subprocess.run(
        ["docker", "run", f"--name={network.full('controller')}", f"--label={network.label}",
         f"--network={network.run_id}", *RESTRICTED, "--tmpfs=/tmp", *env,
         f"--volume={search}:/etc/evo/search.yaml:ro", images["controller"], *controller["args"]],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    searched = time.monotonic() - started - up
    assert done.returncode == 0, (
        f"the controller failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n"
        f"{network.all_logs()}"
    )

    # The lineage, read from the store's database file.
    dump = docker(
        "run", "--rm", "--network=none", *RESTRICTED, f"--volume={volume}",
        "--entrypoint=python", images["lineage"], "-c", LINEAGE_DUMP,
    )  # fmt: skip
    db = json.loads(dump)
    print(f"containers up in {up:.0f} s, search in {searched:.0f} s")
    (s,) = db["searches"]
    assert s["state"] == "finished", s
    candidates = {c["id"]: c for c in db["candidates"]}
    assert len([c for c in candidates.values() if c["origin"] == "seed"]) == 4
    children = [c for c in candidates.values() if c["round_index"] > 0]
    # Each slot once; a slot whose child copied an earlier program is sampled again as
    # slot + attempt x samples (controller/sampling.py), at most twice (the default).
    first = [c for c in children if c["sample_index"] < 2]
    assert len(first) == 2 * 2 * 2, "rounds x prompts x samples"
    slots = {(c["prompt_id"], c["sample_index"]): c for c in children}
    for c in children:
        if c["sample_index"] >= 2:
            assert c["sample_index"] < 2 * 3, c
            assert slots[(c["prompt_id"], c["sample_index"] - 2)]["state"] == "duplicate"
    for edge in db["edges"]:
        child, parent = candidates[edge["child_id"]], candidates.get(edge["parent_id"])
        assert parent is not None, f"candidate {child['id']} has a missing parent"
        assert parent["search_id"] == child["search_id"]
        assert parent["round_index"] < child["round_index"]
        assert parent["state"] == "scored", "parents come from the scored population"
    with_parents = {e["child_id"] for e in db["edges"]}
    assert all(c["id"] in with_parents for c in children if c["origin"] == "language_model")
    scored = [c for c in candidates.values() if c["state"] == "scored"]
    assert any(c["round_index"] > 0 for c in scored), "some child was trained and scored"
    evaluations = {e["candidate_id"]: e for e in db["evaluations"]}
    for c in scored:
        assert c["fitness"] is not None and c["num_params"] > 0, c
        assert c["fitness"] == pytest.approx(-c["num_params"] * c["best_val_error"], rel=1e-6)
        assert evaluations[c["id"]]["status"] == "ok"
        assert evaluations[c["id"]]["sandbox_backend"] == "bwrap"
    hosts = {e["trainer_id"].rsplit("-", 1)[0] for e in db["evaluations"] if e["trainer_id"]}
    assert hosts == {"trainer-1", "trainer-2"}, f"both trainers did work: {hosts}"
