#!/usr/bin/env bash
# Make a Docker engine reachable for the docker sandbox backend, on a machine without
# systemd (CI, dev VMs). Idempotent: does nothing when `docker info` already works.
#
#   images/sandbox/start-docker-engine.sh          # install (if needed), start, wait
#
# Installs Debian's docker.io when dockerd is missing, starts dockerd in the background
# (log: /tmp/dockerd.log), and waits until the engine answers. Sandbox containers run
# with network_mode=none, so the engine needs no bridge and no iptables rules: dockerd
# is started with --bridge=none --iptables=false, which also works in VMs whose kernel
# has no netfilter modules. Override with EVO_DOCKERD_FLAGS.
set -euo pipefail

LOG=${EVO_DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_SECONDS=${EVO_DOCKERD_WAIT:-60}
FLAGS=${EVO_DOCKERD_FLAGS:---bridge=none --iptables=false --ip6tables=false}

die() {
    echo "start-docker-engine: $*" >&2
    exit 1
}

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_up; then
    echo "start-docker-engine: engine already running ($(docker info -f '{{.ServerVersion}}'))"
    exit 0
fi

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    [[ $(id -u) == 0 ]] || die "dockerd is missing and installing it needs root (apt-get install docker.io)"
    echo "start-docker-engine: installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    command -v dockerd >/dev/null || die "apt-get install docker.io did not provide dockerd"
fi

if [[ -n ${DOCKER_HOST:-} && ${DOCKER_HOST} != unix://* ]]; then
    die "DOCKER_HOST=${DOCKER_HOST} is not reachable and is not a local socket to start"
fi

if ! pgrep -x dockerd >/dev/null; then
    [[ $(id -u) == 0 ]] || die "dockerd is not running and starting it needs root"
    # containerd ships with docker.io; dockerd starts its own when none is running.
    echo "start-docker-engine: starting dockerd ${FLAGS} (log: ${LOG})"
    # shellcheck disable=SC2086 # FLAGS is a list of flags
    nohup dockerd ${FLAGS} >"${LOG}" 2>&1 </dev/null &
    disown || true
fi

for _ in $(seq "${WAIT_SECONDS}"); do
    if engine_up; then
        echo "start-docker-engine: engine up ($(docker info -f '{{.ServerVersion}} {{.Driver}} cgroup{{.CgroupVersion}}'))"
        exit 0
    fi
    if ! pgrep -x dockerd >/dev/null; then
        tail -n 30 "${LOG}" >&2 || true
        die "dockerd exited; see ${LOG}"
    fi
    sleep 1
done
tail -n 30 "${LOG}" >&2 || true
die "the engine did not answer within ${WAIT_SECONDS} s; see ${LOG}"
