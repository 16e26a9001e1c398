#!/usr/bin/env bash
# Build the service images. `make images` runs it; so does the container test.
#
#   images/build.sh                       # evo-lineage, evo-controller, evo-trainer, evo-lm (CPU)
#   images/build.sh trainer lineage       # some of them
#   REGISTRY=registry.example.com/evo TAG=v1 images/build.sh
#   images/build.sh trainer-clrs          # the CPU trainer with the CLRS tasks (JAX, dm-clrs)
#   images/build.sh trainer-cuda          # the GPU trainer (downloads several GB once)
#
# Every image builds offline (`docker build --network none`): from evo-base:bookworm
# (images/base/build-base.sh, debootstrap, built once; no base image is pulled) and the
# wheels that images/wheelhouse.py gathers with this machine's pip. trainer-clrs is the
# trainer's Dockerfile installing wheelhouse's trainer-clrs.txt (dm-clrs, JAX, Haiku, optax,
# but not TensorFlow or tfds); no default build includes it. trainer-cuda is trainer-clrs
# with PyPI's torch (CUDA_TORCH, a CUDA build whose nvidia-* libraries come as wheels) and
# JAX's CUDA plugin (jax[CUDA_JAX], pinned to the venv's JAX) from PIP_INDEX, which
# `wheelhouse.py --cuda` downloads once into images/.build/wheels-cuda; the node's driver
# comes in through the NVIDIA container runtime. CI never builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-}
TAG=${TAG:-dev}
PYTHON=${PYTHON:-.venv/bin/python}
CONTEXT=images
export PIP_INDEX=${PIP_INDEX:-https://pypi.org/simple}
export CUDA_TORCH=${CUDA_TORCH:-torch==2.13.0}
export CUDA_JAX=${CUDA_JAX:-cuda13}
services=("$@")
((${#services[@]})) || services=(lineage controller trainer lm)

die() {
    echo "images: $*" >&2
    exit 1
}
name() { echo "${REGISTRY:+${REGISTRY%/}/}evo-$1:${TAG}"; }
# docker build, silent unless it fails (then its whole output).
build() {
    local log
    log=$(mktemp)
    if ! docker build --quiet "$@" >"${log}" 2>&1; then
        cat "${log}" >&2
        rm -f "${log}"
        die "docker build $* failed"
    fi
    rm -f "${log}"
}

[[ -x ${PYTHON} ]] || die "no Python at ${PYTHON}: run 'make install'"
docker info >/dev/null 2>&1 || die "no Docker engine: run images/sandbox/start-docker-engine.sh or set DOCKER_HOST"
started=${SECONDS}
images/base/build-base.sh
cuda=()
[[ " ${services[*]} " == *" trainer-cuda "* ]] && cuda=(--cuda)
"${PYTHON}" images/wheelhouse.py "${cuda[@]}"

for service in "${services[@]}"; do
    t=${SECONDS}
    case ${service} in
    lineage | controller | trainer | lm)
        build --network none -f "images/${service}/Dockerfile" -t "$(name "${service}")" "${CONTEXT}"
        ;;
    trainer-clrs)
        build --network none -f images/trainer/Dockerfile \
            --build-arg REQUIREMENTS=trainer-clrs.txt -t "$(name trainer-clrs)" "${CONTEXT}"
        ;;
    trainer-cuda)
        build --network none -f images/trainer/Dockerfile \
            --build-arg WHEELS=wheels-cuda --build-arg REQUIREMENTS=trainer-clrs.txt \
            --build-arg REQUIREMENTS_EXTRA=cuda.txt \
            -t "$(name trainer-cuda)" "${CONTEXT}"
        ;;
    *) die "unknown image '${service}' (lineage, controller, trainer, lm, trainer-clrs, trainer-cuda)" ;;
    esac
    size=$(docker image inspect -f '{{.Size}}' "$(name "${service}")")
    echo "images: $(name "${service}") $((size / 1024 / 1024)) MiB in $((SECONDS - t)) s"
done
echo "images: done in $((SECONDS - started)) s"
