#!/usr/bin/env bash
# Build the base image every evo image starts from, without any registry: a minimal
# Debian bookworm root made by debootstrap from the Debian mirror, imported with
# `docker import`. Built once: an image whose recipe label matches is reused.
#
#   images/base/build-base.sh                      # -> evo-base:bookworm
#   EVO_BASE_IMAGE=evo-base:test EVO_DEBIAN_MIRROR=http://mirror/debian images/base/build-base.sh
#
# The root holds python3 (Debian's 3.11), bubblewrap and libseccomp2 (the trainer's
# sandbox; util-linux, already essential, brings setpriv and prlimit), libgomp1 (OpenMP,
# which the llama.cpp library in the xllamacpp wheel links against: the lm image's llamacpp
# backend) and CA certificates. No compiler, no pip: the images' build stages bring pip as
# a wheel.
set -euo pipefail
SCRIPT=$(readlink -f "$0")

IMAGE=${EVO_BASE_IMAGE:-evo-base:bookworm}
SUITE=bookworm
MIRROR=${EVO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,bubblewrap,libseccomp2,libgomp1,ca-certificates

die() {
    echo "build-base: $*" >&2
    exit 1
}

docker info >/dev/null 2>&1 || die "no Docker engine: run images/sandbox/start-docker-engine.sh or set DOCKER_HOST"
# The mirror is not part of the recipe: any mirror of the suite gives the same root.
recipe=$( (cat "${SCRIPT}"; echo "${SUITE} ${PACKAGES}") | sha256sum | cut -c1-16)
if [[ $(docker image inspect -f '{{index .Config.Labels "evo.base.recipe"}}' "${IMAGE}" 2>/dev/null) == "${recipe}" ]]; then
    echo "build-base: ${IMAGE} is up to date (recipe ${recipe})"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || die "needs debootstrap (apt-get install debootstrap)"
    echo "build-base: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi
[[ $(id -u) == 0 ]] || die "debootstrap needs root"

started=${SECONDS}
root=$(mktemp -d /var/tmp/evo-base.XXXXXX)
trap 'rm -rf "${root}"' EXIT
echo "build-base: debootstrap ${SUITE} from ${MIRROR} (about 2 minutes)"
debootstrap --variant=minbase --include="${PACKAGES}" "${SUITE}" "${root}" "${MIRROR}" \
    >"${root}.log" 2>&1 || { tail -n 30 "${root}.log" >&2; die "debootstrap failed (log above)"; }
rm -f "${root}.log"

# What a container never needs: package lists and caches, documentation, locales.
rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb \
    "${root}"/var/log/* "${root}"/usr/share/doc/* "${root}"/usr/share/man/* \
    "${root}"/usr/share/info/* "${root}"/usr/share/locale/*
# Keep later apt-get installs (another base's Dockerfile step) from bringing them back.
cat >"${root}/etc/dpkg/dpkg.cfg.d/01-evo-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "${MIRROR}" "${SUITE}" "${MIRROR}" "${SUITE}" "${SUITE}" >"${root}/etc/apt/sources.list"
: >"${root}/etc/machine-id"
: >"${root}/etc/hostname"

tar --numeric-owner -C "${root}" -c . | docker import \
    --change "ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "LABEL evo.base.recipe=${recipe}" \
    --change 'CMD ["/bin/bash"]' \
    --message "Debian ${SUITE} minbase + ${PACKAGES}, by images/base/build-base.sh" \
    - "${IMAGE}" >/dev/null

docker run --rm --network none "${IMAGE}" sh -c 'python3 --version && command -v bwrap setpriv prlimit' >/dev/null \
    || die "the image was built but lacks python3, bwrap, setpriv or prlimit"
size=$(docker image inspect -f '{{.Size}}' "${IMAGE}")
echo "build-base: built ${IMAGE} ($((size / 1024 / 1024)) MiB) in $((SECONDS - started)) s"
