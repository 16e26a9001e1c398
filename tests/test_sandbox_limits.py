"""Limits per sandbox, not per process: cgroups, socket families, the import tree, the template.

The cgroup tests need a host whose cgroups the trainer may write (this machine: v1, as
root); elsewhere they skip and say why, as the trainer's start-up warning does. The
memory tests run tests/hostile/hold_*.py (memory held in memfd files, System V segments,
tmpfs files and extra interpreters, 3 GiB each) under a 1 GiB limit on bwrap and docker,
and watch the host's MemAvailable while each runs.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer import server
from services.trainer.sandbox import cgroups, seccomp
from services.trainer.sandbox.base import GIB, MIB, Limits
from services.trainer.sandbox.imports import child_modules, import_tree
from services.trainer.sandbox.template import SandboxSpec, bwrap_argv, docker_options

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
HOLDERS = sorted(HOSTILE.glob("hold_*.py"))
LIMIT = 1 * GIB
# What else on this shared machine may take while a test watches (other processes).
SLACK = 512 * MIB


def writable_cgroups() -> cgroups.Cgroups:
    found = cgroups.detect()
    if found.missing:
        pytest.skip(found.warning())
    return found


def run_in(
    group: cgroups.SandboxCgroup, code: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*group.join_prefix("/bin/sh"), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alive(pid: int, wait: float = 10) -> bool:
    """Whether `pid` still runs after up to `wait` seconds (a zombie, waiting for its
    reaper, no longer does)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def test_a_cgroup_bounds_the_memory_of_a_group_and_reports_the_oom_kill() -> None:
    group = writable_cgroups().create(f"test-memory-{os.getpid()}")
    assert group is not None
    try:
        group.set_limits(128 * MIB, 16, 1)
        # Two processes of 100 MiB each: each is under the limit, together they are not.
        # Under cgroup v2 one OOM kill takes the group; under v1 the kernel kills one of
        # the two, either, so the parent reports a child killed by SIGKILL as 137.
        code = (
            "import os, time\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    x = b'\\x01' * (100 << 20); time.sleep(30); os._exit(0)\n"
            "y = b'\\x01' * (100 << 20)\n"
            "_, status = os.waitpid(child, 0)\n"
            "os._exit(137 if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 else 0)\n"
        )
        done = run_in(group, code)
        assert done.returncode in (-9, 137), done
        assert group.oom_killed()
        assert 0 < group.peak_bytes() <= 128 * MIB
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs.values())


def test_removing_a_group_kills_processes_that_left_the_process_group() -> None:
    group = writable_cgroups().create(f"test-escape-{os.getpid()}")
    assert group is not None
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True); time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    proc = subprocess.Popen(
        [*group.join_prefix("/bin/sh"), sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    daemon = int(proc.stdout.readline())
    proc.wait(timeout=30)
    assert Path(f"/proc/{daemon}").exists() and daemon in group.pids()
    group.remove()
    assert not alive(daemon)


def test_a_cgroup_bounds_the_number_of_processes() -> None:
    group = writable_cgroups().create(f"test-pids-{os.getpid()}")
    assert group is not None
    try:
        group.set_limits(0, 8, 1)
        code = (
            "import os, time\n"
            "made = 0\n"
            "for _ in range(40):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(5); os._exit(0)\n"
            "        made += 1\n"
            "    except OSError:\n"
            "        break\n"
            "print(made)\n"
        )
        done = run_in(group, code)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) < 8
    finally:
        group.remove()


def test_on_a_real_cgroup2_hierarchy_a_group_is_joined_and_killed_whole() -> None:
    """cgroup v2's own mechanics (joining, cgroup.kill, removal), on this host's v2 mount.

    The memory, pids and cpu controllers here are bound to v1, so v2 limits themselves
    cannot be tried on this machine; the parsing and layout for v2 are tested above."""
    mounts = cgroups._mounts(Path("/proc/self/mountinfo").read_text())
    v2 = next((m for m in mounts if m.version == 2), None)
    if v2 is None or not os.access(v2.point, os.W_OK):
        pytest.skip("no writable cgroup2 hierarchy on this host")
    where = v2.point / f"evo-test-{os.getpid()}"
    where.mkdir()
    group = cgroups.SandboxCgroup({"pids": where})
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid(); print(os.getpid(), flush=True); time.sleep(300)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [*group.join_prefix("/bin/sh"), sys.executable, "-c", code], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    daemon = int(proc.stdout.readline())
    assert group.pids() == {proc.pid, daemon}
    group.remove()
    assert proc.wait(timeout=10) == -9
    assert not where.exists() and not alive(daemon)


def test_cgroup_paths_are_read_from_mountinfo_for_v1_and_v2() -> None:
    """The parsing that decides where groups go, on the two layouts a trainer meets."""
    v1 = (
        "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    mounts = cgroups._mounts(v1)
    assert [(m.version, sorted(m.controllers)) for m in mounts] == [(1, ["memory"]), (1, ["cpu"])]
    own = cgroups._own_paths("4:memory:/trainer\n2:cpu,cpuacct:/trainer\n0::/\n")
    assert own["memory"] == own["cpu"] == "/trainer" and own[""] == "/"
    assert cgroups._directory(mounts[0], own["memory"]) == Path("/sys/fs/cgroup/memory/trainer")
    # A pod: cgroup v2 mounted from the container's own cgroup (a namespace root).
    v2 = "40 30 0:27 /kubepods/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
    (mount,) = cgroups._mounts(v2)
    assert mount.version == 2 and mount.root == "/kubepods/pod1/c1"
    assert cgroups._directory(mount, "/kubepods/pod1/c1") == Path("/sys/fs/cgroup")
    assert cgroups._directory(mount, "/") == Path("/sys/fs/cgroup")


def test_no_writable_cgroup_is_said_loudly_with_the_fix() -> None:
    missing = cgroups.Cgroups(0, missing={"memory": "read-only", "pids": "read-only"})
    text = missing.warning()
    assert "NOT enforced" in text and "memory" in text and "process count" in text
    assert "--backend docker" in text
    assert cgroups.Cgroups(1, parents={"memory": Path("/x")}).warning() == ""


# --- the run template, the import tree and the seccomp policy ------------------------


def spec(**kw: object) -> SandboxSpec:
    fields: dict = {"python": sys.executable, "limits": Limits(), "uid": 61000}
    fields.update(kw)
    return SandboxSpec(**fields)


def test_a_spec_refuses_root_and_no_threads() -> None:
    with pytest.raises(ValueError, match="uid 0"):
        spec(uid=0)
    with pytest.raises(ValueError, match="thread"):
        spec(threads=0)


def test_memory_is_per_process_only_without_a_cgroup() -> None:
    assert spec().rlimits()["as"] == Limits().memory_bytes
    assert "as" not in spec(memory_by_cgroup=True).rlimits()


def test_bwrap_binds_the_import_tree_and_nothing_else_of_the_environment() -> None:
    tree = import_tree()
    argv = bwrap_argv(spec(tree=tree), "/usr/bin/bwrap", 3, "/usr/bin/setpriv")
    binds = [argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind"]
    site = str(tree.site_packages)
    names = {Path(b).name.split("-")[0] for b in binds if b.startswith(site + "/")}
    assert {"torch", "numpy"} <= names
    assert not names & {"mnist1d", "grpc", "sqlalchemy", "transformers"}
    # The environment itself, the checkout and the interpreter's own site-packages: never.
    assert sys.prefix not in binds and str(ROOT) not in binds
    outside_site = {b for b in binds if b.startswith(str(ROOT) + "/") and not b.startswith(site)}
    assert outside_site <= {f"{sys.prefix}/pyvenv.cfg"}
    child = [b for b in binds if b.startswith(site + "/services/")]
    assert sorted(b.removeprefix(site + "/") for b in child) == child_modules()
    assert argv[-5:] == [sys.executable, "-I", "-B", "-m", "services.trainer.child"]


def test_an_interpreter_linked_into_usr_is_not_linked_again(tmp_path: Path) -> None:
    """A venv whose python is /usr/bin/python3 (the images'): /usr is bound whole, so the
    chain stops there; bwrap cannot make a symlink where the bound /usr has a file."""
    usr_python = os.path.realpath("/usr/bin/python3")
    if not os.path.exists(usr_python):
        pytest.skip("this machine has no /usr/bin/python3 to link a venv to")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to("/usr/bin/python3")
    python = str(tmp_path / "bin" / "python")
    argv = bwrap_argv(spec(python=python, tree=import_tree()), "bwrap", 3, None)
    links = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--symlink"]
    assert ("/usr/bin/python3", str(tmp_path / "bin" / "python")) in links
    assert not [dest for _, dest in links if dest.startswith("/usr/")]
    binds = [argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert "/usr" in binds and not [b for b in binds if b.startswith("/usr/")]


def test_the_child_modules_follow_its_imports() -> None:
    modules = child_modules()
    assert "services/trainer/child.py" in modules and "services/__init__.py" in modules
    assert "services/trainer/evaluator.py" not in modules
    assert not any(m.startswith(("services/lineage", "services/proposer")) for m in modules)


def test_docker_options_carry_the_seccomp_profile_and_the_runtime() -> None:
    create, host = docker_options(spec(memory_by_cgroup=True), "{}", runtime="runsc")
    assert host["runtime"] == "runsc"
    assert "seccomp={}" in host["security_opt"] and "no-new-privileges" in host["security_opt"]
    assert {u["Name"] for u in host["ulimits"]} == {"cpu", "fsize", "nofile", "core"}
    assert create["user"] == "61000:61000" and create["command"][-1] == "services.trainer.child"
    _, plain = docker_options(spec(memory_by_cgroup=True), "{}")
    assert "runtime" not in plain


def test_the_docker_profile_allows_only_unix_sockets() -> None:
    profile = seccomp.docker_profile()
    rules = [r for r in profile["syscalls"] if "socket" in r["names"]]
    assert {(r["action"], r["args"][0]["op"], r["args"][0]["value"]) for r in rules} == {
        ("SCMP_ACT_ALLOW", "SCMP_CMP_EQ", 1),
        ("SCMP_ACT_ERRNO", "SCMP_CMP_NE", 1),
    }
    (allowed,) = [
        r for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
    ]
    assert not {"socket", "mount", "unshare", "bpf", "ptrace", "clone"} & set(allowed["names"])
    assert {"read", "write", "mmap", "futex", "execve"} <= set(allowed["names"])
    assert json.loads(seccomp.docker_profile_json()) == profile


def test_the_published_sandbox_profile_is_fresh() -> None:
    published = ROOT / "images/sandbox/evo-sandbox-seccomp.json"
    assert json.loads(published.read_text()) == seccomp.docker_profile(), (
        "regenerate it: .venv/bin/python images/trainer/seccomp_profile.py"
    )


# --- memory held outside any one process, on bwrap and docker -------------------------


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


class Watch:
    """The lowest MemAvailable seen while it runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.start = self.lowest = mem_available()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            self.lowest = min(self.lowest, mem_available())

    def drop(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.start - self.lowest


def docker_or_skip() -> str:
    from tests.test_hostile import docker_ready

    if why := docker_ready():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the docker backend: {why}")
        pytest.skip(why)
    return "docker"


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def trainer(request: pytest.FixtureRequest) -> Iterator[server.Trainer]:
    backend = docker_or_skip() if request.param == "docker" else "bwrap"
    if backend == "bwrap":
        writable_cgroups()
    made = server.Trainer(
        server.TrainerConfig(
            # No warm pool: a sandbox pre-started meanwhile would count against the host.
            backend=backend,
            slots=1,
            warm=0,
            limits=Limits(wall_seconds=90, memory_bytes=2 * GIB),
        )
    )
    yield made
    made.close()


@pytest.mark.parametrize("path", HOLDERS, ids=[p.name for p in HOLDERS])
def test_memory_held_outside_processes_stays_within_the_sandbox_limit(
    path: Path, trainer: server.Trainer
) -> None:
    """Every run is contained; the host's free memory falls by at most the limit.

    MemAvailable is the whole machine's, and other work on a shared machine moves it too:
    a run whose drop is over the bound is repeated, up to three runs, and one run within
    it suffices (an attack that got past the limit would hold its 3 GiB in every run).
    On bwrap the sandbox's own cgroup peak is checked as well, in every run."""
    request = pb.EvaluateRequest(
        program=pb.Program(code=path.read_text()),
        task="mnist1d",
        budget=pb.Budget(steps=20, seed=1),
        limits=pb.Limits(memory_bytes=LIMIT, wall_seconds=60),
        request_id=path.name,
    )
    drops = []
    for _ in range(3):
        sandboxes: list = []
        watch = Watch()
        result = trainer.evaluate(request, on_sandbox=sandboxes.append)
        drops.append(watch.drop())
        shown = (
            f"{path.name} on {trainer.backend.name}: {common.EvalStatus.Name(result.status)} "
            f"{result.message!r}, host memory fell by {[f'{d / MIB:.0f}' for d in drops]} "
            f"MiB; log: {result.log_tail[-400:]}"
        )
        print(shown.split("; log:")[0])  # the figures, for `pytest -s`
        assert "HELD" not in result.log_tail, shown
        if path.name in ("hold_memfd.py", "hold_sysv_shm.py"):
            # The child holds it (or nobody does): the child goes. Elsewhere /dev/shm may
            # be refused, or the kernel may kill only some of the extra interpreters.
            assert result.status in (common.EVAL_STATUS_OOM, common.EVAL_STATUS_CRASHED), shown
        peak = getattr(sandboxes[0], "memory_peak_bytes", None)
        if trainer.backend.name == "bwrap":
            assert peak is not None and 0 < peak <= LIMIT, shown
        if drops[-1] <= LIMIT + SLACK:
            return
    raise AssertionError(f"host memory fell by more than the limit in every run: {shown}")


def test_the_trainer_says_at_start_what_no_cgroup_enforces(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where no cgroup can be written (here simulated: this host has them), starting a
    local backend logs one WARNING naming the limits that are per process only."""
    from services.trainer.sandbox import local

    nothing = cgroups.Cgroups(0, missing=dict.fromkeys(cgroups.CONTROLLERS, "read-only"))
    monkeypatch.setattr(local.cgroups, "detect", lambda: nothing)
    with caplog.at_level("WARNING"):
        backend = local.ProcessBackend(Limits())
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "NOT enforced" in record.getMessage() and "memory" in record.getMessage()
    assert backend._group() is None and not backend.memory_by_cgroup
    assert "--as=" in " ".join(backend.argv())  # memory is then RLIMIT_AS's job


def test_a_job_whose_memory_limit_is_below_the_started_sandbox_is_oom() -> None:
    """A cgroup cannot be lowered below what it holds (the child, torch imported): the job
    ends OOM, not as a trainer error that the controller would retry elsewhere."""
    writable_cgroups()
    trainer = server.Trainer(server.TrainerConfig(backend="bwrap", slots=1, warm=0))
    try:
        request = pb.EvaluateRequest(
            program=pb.Program(code=(HOSTILE / "socket_families.py").read_text()),
            task="mnist1d",
            budget=pb.Budget(steps=10, seed=1),
            limits=pb.Limits(memory_bytes=8 * MIB),
        )
        sandbox = trainer.backend.start()
        time.sleep(5)  # the child imports torch: far more than 8 MiB
        from services.trainer.evaluator import Job, evaluate

        job = Job.from_request(request, trainer.config.limits)
        result = evaluate(job, lambda: sandbox, 1)  # the training run's sandbox
        assert result.status == common.EVAL_STATUS_OOM, result
    finally:
        trainer.close()
