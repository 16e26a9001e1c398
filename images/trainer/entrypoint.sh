#!/bin/sh
# The trainer image's entrypoint: `evo "$@"`, after checking that the bwrap sandbox can start.
#
# bubblewrap needs three things a default container does not give a non-root process:
# user namespaces past the runtime's seccomp profile, an unmasked /proc to mount a fresh
# one, and mount rights past AppArmor. Without them every candidate would fail as
# CRASHED; instead the trainer refuses to start and says which one is missing.
# With --sandbox-proc=minimal (GPU pods, which cannot unmask /proc) no fresh /proc is
# needed and none is tried. EVO_SKIP_SANDBOX_CHECK=1 skips the check.
set -eu

backend=${EVO_SANDBOX:-bwrap}
proc=${EVO_SANDBOX_PROC:-fresh}
prev=
for arg in "$@"; do
    case ${arg} in
    --backend=*) backend=${arg#--backend=} ;;
    --sandbox-proc=*) proc=${arg#--sandbox-proc=} ;;
    esac
    if [ "${prev}" = --backend ]; then backend=${arg}; fi
    if [ "${prev}" = --sandbox-proc ]; then proc=${arg}; fi
    prev=${arg}
done
proc_mount="--proc /proc"
if [ "${proc}" = minimal ]; then proc_mount="--tmpfs /proc"; fi
case "${1:-} ${2:-}" in
"serve trainer" | "sandbox run") uses_sandbox=yes ;;
*) uses_sandbox=no ;;
esac

if [ "${uses_sandbox}" = yes ] && [ "${backend}" = bwrap ] && [ -z "${EVO_SKIP_SANDBOX_CHECK:-}" ]; then
    if ! why=$(bwrap --unshare-user --unshare-pid --unshare-net --unshare-ipc --unshare-uts \
        --ro-bind / / ${proc_mount} --dev /dev --tmpfs /tmp true 2>&1); then
        {
            echo "evo-trainer: the bwrap sandbox cannot start in this container: ${why}"
            case ${why} in
            *"new namespace"*)
                echo "evo-trainer: user namespaces are blocked. Run the container with the seccomp"
                echo "  profile evo-trainer-bwrap.json (Kubernetes: seccompProfile type Localhost;"
                echo "  docker: --security-opt seccomp=images/trainer/evo-trainer-bwrap.json) on a"
                echo "  kernel that allows unprivileged user namespaces (user.max_user_namespaces > 0)."
                ;;
            *proc*)
                echo "evo-trainer: /proc is masked, so the sandbox cannot mount its own. Kubernetes:"
                echo "  hostUsers: false with procMount: Unmasked; docker: --security-opt systempaths=unconfined."
                echo "  If that is set, AppArmor may refuse the mount: load k8s/node/evo-trainer-bwrap.apparmor."
                ;;
            *)
                echo "evo-trainer: see the trainer's node requirements in README.md (Deployment)."
                ;;
            esac
        } >&2
        exit 78 # EX_CONFIG
    fi
fi
exec evo "$@"
