"""The Kubernetes manifests, offline: every overlay renders, validates, and keeps the policies.

`kubectl kustomize` renders each overlay of k8s/overlays (and each with the optional
components of k8s/components); every object is validated against the Kubernetes 1.35 API
schemas (kubernetes-validate, strict: unknown fields are errors); then the security
policies are checked object by object: the Pod Security Standard "restricted" for every
pod, what this system adds (read-only roots, size-limited scratch, resources, gRPC
probes, no token on the trainer, its seccomp profile and user namespace), and the
NetworkPolicies as the flows they allow and refuse.

Without kubectl these tests skip and say so, except with CI=true, where they fail.
"""

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import config as search_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
GPU_OVERLAYS = [o for o in OVERLAYS if o.startswith("gpu")]
# Components a user adds to an overlay, and the overlays each one applies to; the others
# (gpu-trainers, vllm, tgi) are parts of the gpu overlays.
OPTIONAL = {"apparmor": OVERLAYS, "mig": GPU_OVERLAYS}
BUILDING_BLOCKS = {"gpu-trainers", "vllm", "tgi"}
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
IN_CI = os.environ.get("CI", "").lower() == "true"
# The oldest Kubernetes the trainer's setup is accepted by under "restricted" (procMount
# Unmasked in a user-namespaced pod), and the newest schema kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.35.0", "1.37.0"]
PROFILE = "evo-trainer-bwrap.json"
METRICS_PORT = 9090
SCRAPER = "evo/metrics-scraper"
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet", "CronJob", "Pod"}
GRPC_PORTS = {"lineage": 50051, "trainer": 50052, "proposer": 50053}
# Volume types the "restricted" standard allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip

Obj = dict[str, Any]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the manifests cannot be checked: {reason}", pytrace=False)
    pytest.skip(reason)


def kustomize(path: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        _unavailable("kubectl is not installed (it renders the Kustomize overlays)")
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def variant_dir(tmp: Path, overlay: str, components: list[str]) -> Path:
    """A kustomization that is `overlay` with `components` added (as a user would)."""
    here = tmp / f"{overlay}-{'-'.join(components)}"
    here.mkdir()
    rel = Path(os.path.relpath(K8S, here))
    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "overlays" / overlay)],
                "components": [str(rel / "components" / c) for c in components],
            }
        )
    )
    return here


VARIANTS = [(o, []) for o in OVERLAYS] + [(o, [c]) for c, on in OPTIONAL.items() for o in on]


def test_every_component_is_optional_or_part_of_an_overlay() -> None:
    assert set(COMPONENTS) == set(OPTIONAL) | BUILDING_BLOCKS
    assert {"dev", "gpu", "gpu-tgi"} <= set(OVERLAYS)


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "+".join([v[0], *v[1]]))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    overlay, components = request.param
    path = K8S / "overlays" / overlay
    if components:
        path = variant_dir(tmp_path_factory.mktemp("kustomize"), overlay, components)
    return Rendered(overlay, components, kustomize(path))


@dataclass
class Rendered:
    overlay: str
    components: list[str]
    objects: list[Obj]

    def of(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name}"
        return found[0]

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(object, pod template spec) for every object that makes pods."""
        for o in self.objects:
            if o["kind"] in WORKLOADS:
                yield o, pod_spec(o)


def pod_spec(o: Obj) -> Obj:
    if o["kind"] == "Pod":
        return o["spec"]
    if o["kind"] == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return o["spec"]["template"]["spec"]


def pod_labels(o: Obj) -> dict[str, str]:
    if o["kind"] == "Pod":
        return o["metadata"].get("labels", {})
    return o["spec"]["template"]["metadata"].get("labels", {})


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def named(o: Obj) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


# ----------------------------------------------------------------- rendering and schemas


def test_every_overlay_renders_into_one_namespace(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Namespace", "Deployment", "StatefulSet", "Job", "Service", "NetworkPolicy"} <= kinds
    for o in rendered.objects:
        if o["kind"] not in {"Namespace", "RuntimeClass"}:
            assert o["metadata"].get("namespace") == "evo", named(o)
    ns = rendered.get("Namespace", "evo")["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["pod-security.kubernetes.io/enforce-version"] == "latest"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: Rendered, version: str
) -> None:
    try:
        import kubernetes_validate
    except ImportError as e:
        _unavailable(f"kubernetes-validate is not installed ({e}): pip install -e '.[dev]'")
        raise
    problems = []
    for o in rendered.objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{named(o)}: {e.message} at {'/'.join(map(str, e.path))}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------- pod security


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    for o, spec in rendered.workloads():
        where = named(o)
        pod_sc = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{where}: {flag}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{where}: volume {volume['name']} is {kinds}"
        for c in containers(spec):
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("privileged") is not True, at
            assert sc.get("allowPrivilegeEscalation") is False, f"{at}: privilege escalation"
            caps = sc.get("capabilities", {})
            assert "ALL" in caps.get("drop", []), f"{at}: capabilities not dropped"
            assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{at}: adds capabilities"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            assert non_root is True, f"{at}: runAsNonRoot"
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, f"{at}: runs as root"
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, f"{at}: seccomp"
            if sc.get("procMount", "Default") != "Default":
                # Accepted by "restricted" (policy 1.35+) only in the pod's own user namespace.
                assert spec.get("hostUsers") is False, f"{at}: procMount without hostUsers"
            for port in c.get("ports", []):
                assert "hostPort" not in port, f"{at}: hostPort"
            apparmor = sc.get("appArmorProfile", {"type": "RuntimeDefault"})
            assert apparmor["type"] in {"RuntimeDefault", "Localhost"}, f"{at}: AppArmor"


def test_every_container_has_a_read_only_root_and_limited_scratch(rendered: Rendered) -> None:
    for o, spec in rendered.workloads():
        for c in containers(spec):
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{named(o)} {c['name']}"
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{named(o)}: {volume['name']}"


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for o, spec in rendered.workloads():
        for c in containers(spec):
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert what in resources.get(bound, {}), f"{named(o)} {c['name']}: {bound}"


def test_grpc_services_have_grpc_probes_on_their_port(rendered: Rendered) -> None:
    seen = set()
    for o, spec in rendered.workloads():
        for c in spec["containers"]:
            grpc_ports = [p["containerPort"] for p in c.get("ports", []) if p["name"] == "grpc"]
            if o["kind"] in {"Deployment", "StatefulSet"}:
                assert c.get("readinessProbe") and c.get("livenessProbe"), named(o)
            if not grpc_ports:
                continue
            seen.add(o["metadata"]["name"])
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert c[probe]["grpc"]["port"] == grpc_ports[0], f"{named(o)} {probe}"
    assert set(GRPC_PORTS) <= seen


def test_services_point_at_the_grpc_ports(rendered: Rendered) -> None:
    for name, port in GRPC_PORTS.items():
        service = rendered.get("Service", name)
        assert service["spec"]["ports"][0]["port"] == port
        target = service["spec"]["selector"]
        pods = [o for o, _ in rendered.workloads() if pod_labels(o).items() >= target.items()]
        assert [named(o) for o in pods] == [f"Deployment/{name}"]


# ----------------------------------------------------------------- the trainer


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` in `args`, or None."""
    found = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(found) <= 1, f"--{name} given {len(found)} times"
    return found[0] if found else None


def test_the_trainer_keeps_its_sandbox_and_holds_nothing(rendered: Rendered) -> None:
    trainer = rendered.get("Deployment", "trainer")
    spec = pod_spec(trainer)
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("serviceAccountName"), "the trainer needs no API access"
    seccomp = spec["securityContext"]["seccompProfile"]
    assert seccomp == {"type": "Localhost", "localhostProfile": f"profiles/{PROFILE}"}
    (c,) = spec["containers"]
    assert "--backend=bwrap" in c["args"]
    if rendered.overlay in GPU_OVERLAYS:
        # The toolkit cannot run a user-namespaced pod, so no unmasked /proc: the
        # sandboxes get a minimal one (k8s/README.md).
        assert "hostUsers" not in spec
        assert "procMount" not in c["securityContext"]
        assert flag(c["args"], "sandbox-proc") == "minimal"
        assert flag(c["args"], "gpus") == "all"
    else:
        assert spec["hostUsers"] is False
        assert c["securityContext"]["procMount"] == "Unmasked"
        assert flag(c["args"], "sandbox-proc") in (None, "fresh")
    # One secret only: what the held-out splits are generated from, shared by the fleet
    # (docs/security.md); no credentials of any other service.
    assert not c.get("envFrom")
    assert c.get("env") == [
        {
            "name": "EVO_TRAINER_SECRET",
            "valueFrom": {
                "secretKeyRef": {"name": "evo-trainer-secret", "key": "secret", "optional": True}
            },
        }
    ]
    mounts = {m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert all("emptyDir" in volumes[m] for m in mounts), "only scratch space is mounted"
    assert trainer["spec"]["replicas"] >= 2
    assert rendered.get("Service", "trainer")["spec"]["clusterIP"] == "None"
    if "apparmor" in rendered.components:
        profile = c["securityContext"]["appArmorProfile"]
        assert profile == {"type": "Localhost", "localhostProfile": "evo-trainer-bwrap"}
        assert "profile evo-trainer-bwrap " in (K8S / "node/evo-trainer-bwrap.apparmor").read_text()


def test_each_overlay_runs_its_own_proposer_and_trainers(rendered: Rendered) -> None:
    if rendered.overlay == "dev":
        check_dev(rendered)
    else:
        check_gpu(rendered)


# The model server of each GPU overlay: (Deployment, image prefix, proposer backend, URL).
MODEL_SERVERS = {
    "gpu": ("vllm", "docker.io/vllm/vllm-openai:", "openai", "http://vllm.evo.svc.cluster.local:8000"),
    "gpu-tgi": ("tgi", "ghcr.io/huggingface/text-generation-inference:", "tgi",
                "http://tgi.evo.svc.cluster.local:8080"),
}  # fmt: skip


def gpu_limits(c: Obj) -> dict[str, int]:
    limits = c.get("resources", {}).get("limits", {})
    return {k: int(v) for k, v in limits.items() if k.startswith("nvidia.com/")}


def check_gpu(rendered: Rendered) -> None:
    """The model server on a GPU behind the proposer; CUDA trainers, one GPU (or, with the
    mig component, one MIG slice) each, on the GPU nodes through the RuntimeClass."""
    trainer = rendered.get("Deployment", "trainer")
    spec = pod_spec(trainer)
    (c,) = spec["containers"]
    assert c["image"] == "evo-trainer-cuda"
    if "mig" in rendered.components:
        assert gpu_limits(c) == {"nvidia.com/mig-1g.18gb": 1}
        assert flag(c["args"], "threads-per-slot") == "2"
    else:
        assert gpu_limits(c) == {"nvidia.com/gpu": 1}
    assert spec["runtimeClassName"] == "evo-nvidia"
    assert trainer["spec"]["replicas"] > 2
    name, image, backend, url = MODEL_SERVERS[rendered.overlay]
    other = {"vllm", "tgi"} - {name}
    assert not [o for o in rendered.of("Deployment") if o["metadata"]["name"] in other]
    server_spec = pod_spec(rendered.get("Deployment", name))
    (server,) = server_spec["containers"]
    assert server["image"].startswith(image)
    assert gpu_limits(server) == {"nvidia.com/gpu": 1}
    assert server_spec["runtimeClassName"] == "evo-nvidia"
    config = rendered.of("ConfigMap")
    model = [c for c in config if c["metadata"]["name"].startswith(f"{name}-config")]
    assert model and model[0]["data"]["MODEL_ID"]
    assert any(v.get("persistentVolumeClaim") for v in server_spec["volumes"])
    proposer = pod_spec(rendered.get("Deployment", "proposer"))["containers"][0]
    assert flag(proposer["args"], "backend") == backend
    assert flag(proposer["args"], "url") == url


def test_gpu_pods_ask_only_for_what_the_nvidia_toolkit_can_run(rendered: Rendered) -> None:
    """No GPU request in a user-namespaced pod (NVIDIA/nvidia-container-toolkit#648,
    NVIDIA/gpu-operator#466), nor with an unmasked /proc (which needs one), nor under
    gVisor; every GPU pod runs through a RuntimeClass with the NVIDIA handler."""
    classes = {o["metadata"]["name"]: o for o in rendered.of("RuntimeClass")}
    gpu_pods = 0
    for o, spec in rendered.workloads():
        if not any(gpu_limits(c) for c in containers(spec)):
            continue
        gpu_pods += 1
        assert spec.get("hostUsers", True) is not False, f"{named(o)}: hostUsers: false"
        for c in containers(spec):
            assert c.get("securityContext", {}).get("procMount", "Default") == "Default", named(o)
        runtime = classes[spec["runtimeClassName"]]
        assert runtime["handler"] == "nvidia", named(o)
    assert gpu_pods == (2 if rendered.overlay in GPU_OVERLAYS else 0)


def test_every_runtime_class_schedules_onto_the_nodes_that_have_it(rendered: Rendered) -> None:
    for runtime in rendered.of("RuntimeClass"):
        scheduling = runtime.get("scheduling", {})
        assert scheduling.get("nodeSelector"), f"{named(runtime)} without a nodeSelector"
        assert runtime["handler"] != "runsc", "gVisor refuses user-namespaced pods (README)"
    used = {spec.get("runtimeClassName") for _, spec in rendered.workloads()} - {None}
    assert used <= {o["metadata"]["name"] for o in rendered.of("RuntimeClass")}


def check_dev(rendered: Rendered) -> None:
    """The hf backend with its soft prompts and converted model on a volume; CPU trainers."""
    spec = pod_spec(rendered.get("Deployment", "proposer"))
    (c,) = spec["containers"]
    assert "--backend=hf" in c["args"]
    assert "--adapter-dir=/var/lib/evo/adapters" in c["args"]
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "proposer-state"}}
    assert rendered.get("PersistentVolumeClaim", "proposer-state")
    assert pod_spec(rendered.get("Deployment", "trainer"))["containers"][0]["image"] == (
        "evo-trainer"
    )


def test_the_seccomp_profile_allows_bwrap_and_nothing_dangerous() -> None:
    shipped = K8S / "node" / PROFILE
    assert shipped.read_bytes() == (REPO / "images/trainer" / PROFILE).read_bytes()
    profile = json.loads(shipped.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }
    for needed in ("clone", "unshare", "mount", "umount2", "pivot_root", "execve", "openat"):
        assert needed in allowed
    for dangerous in ("bpf", "kexec_load", "init_module", "ptrace", "keyctl", "setns", "reboot"):
        assert dangerous not in allowed
    clone3 = next(r for r in profile["syscalls"] if r["names"] == ["clone3"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38  # ENOSYS


# ----------------------------------------------------------------- the database and the search


def test_postgres_keeps_its_data_and_credentials_out_of_the_manifests(rendered: Rendered) -> None:
    postgres = rendered.get("StatefulSet", "postgres")
    claims = postgres["spec"]["volumeClaimTemplates"]
    assert claims[0]["metadata"]["name"] == "data"
    mounts = pod_spec(postgres)["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/var/lib/postgresql/data"} in mounts
    assert not rendered.of("Secret"), "no credentials in the manifests: make deploy creates them"
    lineage = pod_spec(rendered.get("Deployment", "lineage"))
    (migrate,) = lineage["initContainers"]
    assert migrate["args"] == ["db", "upgrade"]
    (server,) = lineage["containers"]
    assert "--no-migrate" in server["args"]
    for c in (migrate, server):
        env = {e["name"]: e for e in c["env"]}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "evo-postgres",
            "key": "password",
        }
        assert env["EVO_DB_URL"]["value"].startswith(
            "postgresql+psycopg://$(PGUSER):$(PGPASSWORD)@"
        )
        # $(VAR) expands only variables defined before it.
        names = [e["name"] for e in c["env"]]
        assert names.index("EVO_DB_URL") > names.index("PGPASSWORD")


def test_the_controller_job_runs_one_valid_search(rendered: Rendered) -> None:
    """Retried (a drained node, an evicted pod) without counting the disruption, and a
    retry resumes the same search instead of starting a second one."""
    job = rendered.get("Job", "evo-search")
    assert job["spec"]["backoffLimit"] >= 1
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"  # podFailurePolicy needs it
    (c,) = spec["containers"]
    assert c["args"] == ["search", "start", "/etc/evo/search.yaml", "--resume-same"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["EVO_TRAINER_ADDRESS"] == "dns:///trainer.evo.svc.cluster.local:50052"
    for service, port in GRPC_PORTS.items():
        host, _, got = env[f"EVO_{service.upper()}_ADDRESS"].rsplit("/", 1)[-1].rpartition(":")
        assert host == f"{service}.evo.svc.cluster.local" and int(got) == port
    volume = next(v for v in spec["volumes"] if v["name"] == "search")
    config_map = rendered.get("ConfigMap", volume["configMap"]["name"])
    parsed = search_config.parse(config_map["data"]["search.yaml"], "search.yaml")
    assert parsed.task == "mnist1d"
    if rendered.overlay in GPU_OVERLAYS:
        assert not parsed.tunes, "neither vLLM nor TGI can be soft prompt-tuned"


def test_images_are_the_ones_make_images_builds(rendered: Rendered) -> None:
    ours = {
        c["image"]
        for _, spec in rendered.workloads()
        for c in containers(spec)
        if c["image"].startswith("evo-")
    }
    trainer = "evo-trainer-cuda" if rendered.overlay in GPU_OVERLAYS else "evo-trainer"
    assert ours == {"evo-lineage", "evo-controller", "evo-lm", trainer}
    for image in ours:
        assert (REPO / "images" / image.removeprefix("evo-").split("-")[0] / "Dockerfile").exists()
    deploy = (K8S / "deploy.sh").read_text()
    assert "[[ ${overlay} == gpu* ]] && images=(lineage controller trainer-cuda lm)" in deploy


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_deploy_pins_our_images_by_digest_and_names_the_job_after_the_search(
    overlay: str,
) -> None:
    """`k8s/deploy.sh render` writes the kustomization `make deploy` applies, for given digests."""
    if shutil.which("kubectl") is None:
        _unavailable("kubectl is not installed")
    images = ["lineage", "controller", "trainer-cuda" if overlay == "gpu" else "trainer", "lm"]
    env = {
        **os.environ,
        "REGISTRY": "registry.example.com/evo/",
        "EVO_IMAGE_DIGESTS": ",".join(f"{i}={DIGEST}" for i in images),
    }
    done = subprocess.run(
        [str(K8S / "deploy.sh"), "render", overlay], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    work = REPO / done.stdout.strip()
    objects = kustomize(work)
    ours = {
        c["image"]
        for o in objects
        if o["kind"] in WORKLOADS
        for c in containers(pod_spec(o))
        if "/evo/evo-" in c["image"]
    }
    assert ours == {f"registry.example.com/evo/evo-{i}@{DIGEST}" for i in images}
    assert not [
        c["image"]
        for o in objects
        if o["kind"] in WORKLOADS
        for c in containers(pod_spec(o))
        if c["image"].startswith("evo-")
    ], "every image of ours is rewritten"
    (job,) = [o for o in objects if o["kind"] == "Job"]
    config = next(v for v in pod_spec(job)["volumes"] if v["name"] == "search")
    suffix = config["configMap"]["name"].removeprefix("search-config-")
    assert (
        job["metadata"]["name"] == f"evo-search-{suffix}" == (work / "job-name").read_text().strip()
    )
    bad = {**env, "EVO_IMAGE_DIGESTS": "lineage=latest"}
    refused = subprocess.run(
        [str(K8S / "deploy.sh"), "render", overlay], env=bad, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "not a digest" in refused.stderr


# ----------------------------------------------------------------- a cluster that keeps running


def test_trainers_drain_for_longer_than_an_evaluation(rendered: Rendered) -> None:
    """SIGTERM: the trainer finishes what runs (--drain-seconds, longer than any evaluation)
    before Kubernetes' grace period ends; drains take the trainers one at a time."""
    trainer = rendered.get("Deployment", "trainer")
    spec = pod_spec(trainer)
    (c,) = spec["containers"]
    longest = float(flag(c["args"], "time-limit") or 0)
    drain = float(flag(c["args"], "drain-seconds") or 0)
    assert 0 < longest < drain < spec["terminationGracePeriodSeconds"]
    search = rendered.get("ConfigMap", next(
        v["configMap"]["name"] for v in pod_spec(rendered.get("Job", "evo-search"))["volumes"]
        if v["name"] == "search"
    ))  # fmt: skip
    asked = search_config.parse(search["data"]["search.yaml"], "search.yaml").training
    assert asked.wall_seconds <= longest, "the search asks for no more than a trainer allows"
    budgets = [
        p for p in rendered.of("PodDisruptionBudget")
        if matches(p["spec"]["selector"], pod_labels(trainer))
    ]  # fmt: skip
    assert len(budgets) == 1 and budgets[0]["spec"] == {
        "maxUnavailable": 1,
        "selector": budgets[0]["spec"]["selector"],
    }
    assert trainer["spec"]["replicas"] >= 2, "one drains while the others work"


def test_every_grpc_service_serves_metrics(rendered: Rendered) -> None:
    for name in GRPC_PORTS:
        (c,) = pod_spec(rendered.get("Deployment", name))["containers"]
        assert flag(c["args"], "metrics-port") == str(METRICS_PORT), name
        assert {"name": "metrics", "containerPort": METRICS_PORT} in c["ports"], name


# ----------------------------------------------------------------- network policies


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    if not labels.items() >= selector.get("matchLabels", {}).items():
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        ok = {
            "In": value in e.get("values", []),
            "NotIn": value not in e.get("values", []),
            "Exists": e["key"] in labels,
            "DoesNotExist": e["key"] not in labels,
        }[e["operator"]]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """A pod (labels, namespace labels) or, with `cidr`, an address outside the cluster."""

    labels: tuple[tuple[str, str], ...]
    namespace: str = "evo"
    cidr: str = ""
    namespace_labels: tuple[tuple[str, str], ...] = ()

    def pod(self) -> dict[str, str]:
        return dict(self.labels)

    def namespace_metadata(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **dict(self.namespace_labels)}


def app(name: str) -> Peer:
    return Peer((("app.kubernetes.io/name", name),))


DNS = Peer((("k8s-app", "kube-dns"),), namespace="kube-system")
INTERNET = Peer((), namespace="", cidr="203.0.113.7/32")  # a public (documentation) address
METADATA = Peer((), namespace="", cidr="169.254.169.254/32")  # the cloud's metadata service
PRIVATE = Peer((), namespace="", cidr="10.1.2.3/32")  # the cluster's or the company's network
SCRAPER = Peer(
    (("app.kubernetes.io/name", "prometheus"),),
    namespace="monitoring",
    namespace_labels=(("evo/metrics-scraper", "true"),),
)


def peer_matches(peer_rule: Obj, peer: Peer) -> bool:
    if "ipBlock" in peer_rule:
        if not peer.cidr:
            return False
        block, address = peer_rule["ipBlock"], ipaddress.ip_network(peer.cidr)
        excepted = any(address.subnet_of(ipaddress.ip_network(e)) for e in block.get("except", []))
        return address.subnet_of(ipaddress.ip_network(block["cidr"])) and not excepted
    if peer.cidr:
        return False
    ns_selector = peer_rule.get("namespaceSelector")
    if ns_selector is None:
        ns_ok = peer.namespace == "evo"
    else:
        ns_ok = matches(ns_selector, peer.namespace_metadata())
    return ns_ok and matches(peer_rule.get("podSelector", {}), peer.pod())


def port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def allowed(rules: list[Obj], key: str, other: Peer, port: int, protocol: str) -> bool:
    for rule in rules:
        peers = rule.get(key)
        if (not peers or any(peer_matches(p, other) for p in peers)) and port_matches(
            rule, port, protocol
        ):
            return True
    return False


def flow(rendered: Rendered, src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether the NetworkPolicies let `src` open `dst:port` (both sides checked)."""
    policies = rendered.of("NetworkPolicy")

    def side(me: Peer, direction: str, key: str, other: Peer) -> bool:
        if me.namespace != "evo":
            return True  # not governed by these policies
        mine = [
            p["spec"]
            for p in policies
            if matches(p["spec"]["podSelector"], me.pod())
            and direction in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not mine:
            return True
        rules = [r for spec in mine for r in spec.get(direction.lower(), []) or []]
        return allowed(rules, key, other, port, protocol)

    return side(src, "Egress", "to", dst) and side(dst, "Ingress", "from", src)


def test_a_default_deny_policy_covers_every_pod(rendered: Rendered) -> None:
    (deny,) = [p for p in rendered.of("NetworkPolicy") if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_calls_the_system_makes_are_allowed(rendered: Rendered) -> None:
    controller, trainer, lineage = app("controller"), app("trainer"), app("lineage")
    proposer, postgres = app("proposer"), app("postgres")
    assert flow(rendered, controller, lineage, 50051)
    assert flow(rendered, controller, trainer, 50052)
    assert flow(rendered, controller, proposer, 50053)
    assert flow(rendered, lineage, postgres, 5432)
    for needs_dns in (controller, lineage, proposer):
        assert flow(rendered, needs_dns, DNS, 53, "UDP")
    if rendered.overlay in GPU_OVERLAYS:
        name, _, _, url = MODEL_SERVERS[rendered.overlay]
        server, port = app(name), int(url.rsplit(":", 1)[1])
        assert flow(rendered, proposer, server, port)
        assert flow(rendered, server, DNS, 53, "UDP")
        assert flow(rendered, server, INTERNET, 443), "the model server downloads its model"
        # ...and reaches nothing else: no other port, no private network, no metadata service.
        for target, p in [(INTERNET, 80), (METADATA, 443), (METADATA, 80), (PRIVATE, 443),
                          (app("lineage"), 50051), (app("trainer"), 50052)]:  # fmt: skip
            assert not flow(rendered, server, target, p), (name, target, p)
        for other in (controller, trainer, lineage, postgres):
            assert not flow(rendered, other, server, port), other


def test_a_scraper_reads_metrics_and_nothing_else(rendered: Rendered) -> None:
    for name, port in GRPC_PORTS.items():
        assert flow(rendered, SCRAPER, app(name), METRICS_PORT), name
        assert not flow(rendered, SCRAPER, app(name), port), f"{name}: only metrics"
    unlabelled = Peer(SCRAPER.labels, namespace="monitoring")
    assert not flow(rendered, unlabelled, app("trainer"), METRICS_PORT)
    assert not flow(rendered, SCRAPER, app("postgres"), 5432)
    assert not flow(rendered, app("proposer"), app("trainer"), METRICS_PORT)


def test_the_trainer_accepts_only_the_controller_and_sends_nothing(rendered: Rendered) -> None:
    trainer = app("trainer")
    others = [app(n) for n in ("lineage", "proposer", "postgres", "tgi", "trainer")]
    for other in others:
        assert not flow(rendered, other, trainer, 50052), other
    assert not flow(rendered, app("controller"), trainer, 22)
    for target, port, protocol in [
        (DNS, 53, "UDP"), (DNS, 53, "TCP"), (INTERNET, 443, "TCP"), (INTERNET, 80, "TCP"),
        (app("lineage"), 50051, "TCP"), (app("postgres"), 5432, "TCP"),
        (app("proposer"), 50053, "TCP"), (app("controller"), 8080, "TCP"),
    ]:  # fmt: skip
        assert not flow(rendered, trainer, target, port, protocol), (target, port)


def test_nothing_else_gets_through(rendered: Rendered) -> None:
    assert not flow(rendered, app("controller"), app("postgres"), 5432)
    assert not flow(rendered, app("proposer"), app("lineage"), 50051)
    assert not flow(rendered, app("postgres"), INTERNET, 443)
    assert not flow(rendered, app("lineage"), INTERNET, 443)
    assert not flow(rendered, app("controller"), INTERNET, 443)
    assert not flow(rendered, app("proposer"), INTERNET, 443)
    assert not flow(rendered, app("postgres"), DNS, 53, "UDP")
    intruder = Peer((("app", "intruder"),), namespace="other")
    assert not flow(rendered, intruder, app("lineage"), 50051)
