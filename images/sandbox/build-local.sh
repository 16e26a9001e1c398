#!/usr/bin/env bash
# Build the docker sandbox backend's image (evo-sandbox:local) offline: no registry, no
# network, no base image. The root filesystem is assembled from this machine's files by
# rootfs.py (the venv's interpreter, torch, numpy and their shared libraries, and the
# child's modules) and imported with `docker import`.
#
#   images/sandbox/build-local.sh                 # uses .venv/bin/python
#   EVO_SANDBOX_PYTHON=/opt/venv/bin/python EVO_SANDBOX_IMAGE=evo-sandbox:dev images/sandbox/build-local.sh
#
# Rebuild after changing the sandbox's modules (services/trainer/child.py, clrs_child.py,
# clrs_lib.py): the image records their hash
# and the backend refuses an image whose child differs from the trainer's.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${EVO_SANDBOX_PYTHON:-.venv/bin/python}
IMAGE=${EVO_SANDBOX_IMAGE:-evo-sandbox:local}
UID_GID=61000:61000

die() {
    echo "build-local: $*" >&2
    exit 1
}

[[ -x ${PYTHON} ]] || die "no Python at ${PYTHON}: run 'make install EXTRAS=trainer,dev' or set EVO_SANDBOX_PYTHON"
"${PYTHON}" -c "import torch, numpy" 2>/dev/null || die "${PYTHON} cannot import torch and numpy"
docker info >/dev/null 2>&1 || die "no Docker engine: run images/sandbox/start-docker-engine.sh or set DOCKER_HOST"

# The interpreter path as the venv spells it (not resolved): its pyvenv.cfg sits beside bin/.
python_in_image=$("${PYTHON}" -c 'import sys; print(sys.executable)')
# The container mounts its own tmpfs on /tmp, which would hide a venv that lives there.
[[ ${python_in_image} != /tmp/* ]] || die "the venv is under /tmp (${python_in_image}), which the sandbox's own /tmp hides: use a checkout elsewhere"
# The sandbox's modules, hashed in services/trainer/sandbox/docker.py's CHILD_FILES order.
child_sha=$(cat services/trainer/{child,clrs_child,clrs_lib,gpu_child}.py | sha256sum | cut -d' ' -f1)
old_id=$(docker image inspect -f '{{.Id}}' "${IMAGE}" 2>/dev/null || true)
started=${SECONDS}

"${PYTHON}" images/sandbox/rootfs.py | docker import \
    --change "USER ${UID_GID}" \
    --change "WORKDIR /tmp" \
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8" \
    --change "LABEL evo.sandbox.python=${python_in_image}" \
    --change "LABEL evo.sandbox.child_sha256=${child_sha}" \
    --change "CMD [\"${python_in_image}\", \"-I\", \"-B\", \"-m\", \"services.trainer.child\"]" \
    --message "evo sandbox image, assembled by images/sandbox/build-local.sh" \
    - "${IMAGE}" >/dev/null

# A smoke test: the child's imports work as the sandbox uid, with no network.
docker run --rm --network none --read-only --user "${UID_GID}" --cap-drop ALL \
    "${IMAGE}" "${python_in_image}" -I -B -c \
    "import torch, numpy, services.trainer.child; print('torch', torch.__version__, 'numpy', numpy.__version__)" \
    || die "the image was built but its Python cannot import the child's modules"

new_id=$(docker image inspect -f '{{.Id}}' "${IMAGE}")
if [[ -n ${old_id} && ${old_id} != "${new_id}" ]]; then
    docker image rm "${old_id}" >/dev/null 2>&1 || true # still used by a container: leave it
fi
size=$(docker image inspect -f '{{.Size}}' "${IMAGE}")
echo "build-local: built ${IMAGE} ($((size / 1024 / 1024)) MiB) in $((SECONDS - started)) s"
