#!/usr/bin/env bash
# Builds the fpclass server image (the repository's Containerfile) FROM a Debian root filesystem that
# debootstrap makes from Debian's packages, for machines that cannot pull python:3.12-slim from Docker Hub;
# then proves what the image serves, exports it as an OCI archive, and records every step.
#
#   sudo container/build_rootfs.sh --workdir runs/footprint --image print.png [--out build/container]
#
# Needs root and Debian's debootstrap, podman, runc, skopeo, curl and python3. The steps, each recorded in
# OUT/steps.tsv (step, ok|failed|skipped, seconds, message), with its output in OUT/logs/<step>.log:
#   debootstrap         bookworm, --variant=minbase, plus python3, python3-venv and ca-certificates
#   podman_import       that tree -> localhost/fpclass-debian:bookworm
#   context             the files the Containerfile copies, from this checkout, and --workdir as model/
#   podman_build        the Containerfile FROM that base, its RUN steps run by runc (--isolation oci); if they
#                       cannot run, podman_build_chroot uses buildah's chroot isolation, which needs no runtime
#   container_defaults  a plain `podman run` of the image, to record whether containers start as they come
#   container_serve     the image as a container (runc, limits the runtime may set, host network), answering
#                       /healthz and /predict with --image; then `podman stop`
#   chroot_serve        a container's root filesystem of the image started with chroot instead of a runtime,
#                       answering on loopback
#   oci_archive         podman save --format oci-archive -> OUT/fpclass-serve.oci.tar, read back with skopeo
# The servers' answers and logs are kept in OUT/proof/. The exit status is 0 when the image was built, served
# (as a container or by chroot) and archived.
#
# Nothing outside OUT is written: the script runs in a private mount namespace where /var/lib, /run and
# /var/tmp (podman's and runc's state) are overlays whose upper layers live in OUT, and every mount it makes
# (those, and /proc, /dev, /sys in the chroot) goes away with that namespace, however the script ends.
set -euo pipefail

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  echo 'options: --workdir DIR   a trained run (required)'
  echo '         --image FILE    an image to send to /predict (required)'
  echo '         --out DIR       default: build/container in the checkout'
  echo '         --tag NAME      default: localhost/fpclass-serve:latest'
  echo '         --mirror URL    default: http://deb.debian.org/debian'
  # shellcheck disable=SC2016
  echo '         --ca-bundle F   a CA bundle for pip behind a TLS-intercepting proxy (default: $PIP_CERT)'
  echo '         --reuse-base    keep OUT/base.tar from an earlier run instead of running debootstrap'
  echo '         --ref REF       copy the code from a git commit or tag (git archive) instead of the working tree'
}

repo=$(cd "$(dirname "$0")/.." && pwd)
workdir='' image='' out="$repo/build/container" tag='localhost/fpclass-serve:latest'
mirror='http://deb.debian.org/debian' ca_bundle="${PIP_CERT:-}" reuse_base=0 ref=''
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) workdir=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --ca-bundle) ca_bundle=$2; shift 2 ;;
    --reuse-base) reuse_base=1; shift ;;
    --ref) ref=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build_rootfs.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "build_rootfs.sh: $*" >&2; exit 2; }
if [ -z "$workdir" ] || [ ! -f "$workdir/metadata.json" ]; then
  fail "--workdir must be a trained run (no metadata.json in '$workdir')"
fi
if [ -z "$image" ] || [ ! -f "$image" ]; then
  fail "--image must be an image file to send to /predict (got '$image')"
fi
[ -z "$ca_bundle" ] || [ -f "$ca_bundle" ] || fail "--ca-bundle $ca_bundle: no such file"
[ -z "$ref" ] || git -C "$repo" rev-parse --verify -q "$ref^{commit}" > /dev/null || fail "--ref $ref: no such commit"
out=$(realpath -m "$out")
case "$out/" in
  /var/lib/*|/run/*|/var/tmp/*)
    fail "--out $out: choose a folder outside /var/lib, /run and /var/tmp (overlaid here)" ;;
esac
[ "$(id -u)" = 0 ] || fail 'needs root (debootstrap, mount, chroot, rootful podman)'
missing=()
for command in debootstrap podman runc skopeo curl python3 unshare chroot; do
  command -v "$command" > /dev/null || missing+=("$command")
done
[ ${#missing[@]} = 0 ] || fail "missing ${missing[*]}: apt-get install debootstrap podman runc skopeo curl python3"
workdir=$(realpath "$workdir") image=$(realpath "$image")
[ -z "$ca_bundle" ] || ca_bundle=$(realpath "$ca_bundle")

# Everything below runs in a private mount namespace: its mounts never reach the host's.
if [ -z "${FPCLASS_BUILD_NAMESPACE:-}" ]; then
  mkdir -p "$out"
  reuse=()
  [ $reuse_base = 0 ] || reuse=(--reuse-base)
  FPCLASS_BUILD_NAMESPACE=1 exec unshare --mount --propagation private "$0" --workdir "$workdir" --image "$image" \
    --out "$out" --tag "$tag" --mirror "$mirror" ${ca_bundle:+--ca-bundle "$ca_bundle"} ${ref:+--ref "$ref"} \
    "${reuse[@]}"
fi

logs="$out/logs" proof="$out/proof" steps="$out/steps.tsv"
base_tag='localhost/fpclass-debian:bookworm'
rm -rf "$logs" "$proof" "$out/context" "$out/base-rootfs" "$out/fpclass-serve.oci.tar" "$out/tmp"
mkdir -p "$logs" "$proof" "$out/tmp"
printf 'step\tstatus\tseconds\tmessage\n' > "$steps"
export TMPDIR="$out/tmp"  # podman's and buildah's scratch files

# podman's state (blob-info cache, network and runc state) goes to overlays kept in OUT.
for pair in var-lib:/var/lib run:/run var-tmp:/var/tmp; do
  name=${pair%%:*} target=${pair#*:}
  mkdir -p "$out/host-state/$name/upper" "$out/host-state/$name/work"
  mount -t overlay "fpclass-$name" \
    -o "lowerdir=$target,upperdir=$out/host-state/$name/upper,workdir=$out/host-state/$name/work" "$target"
done
# The run root is a short path (podman allows 50 characters) in the overlaid /run, so it lands in OUT too.
podman=(podman --root "$out/storage" --runroot /run/fpclass-build --storage-driver overlay --cgroup-manager cgroupfs
        --events-backend none)
# Where CAP_SYS_RESOURCE is denied a runtime may only lower limits: podman's defaults (nofile 1048576, nproc
# above pid_max) fail with 'setrlimit RLIMIT_NOFILE: Operation not permitted', so the containers get the
# limits this process has. crun refuses hybrid cgroups (v1 controllers plus a v2 mount), runc does not.
nproc_limit=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc_limit" = unlimited ] || [ "$nproc_limit" -gt "$pid_max" ]; then nproc_limit=$pid_max; fi
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc_limit:$nproc_limit")
cgroups_before=$(ls -d /sys/fs/cgroup/*/libpod_parent 2> /dev/null || true)
"${podman[@]}" rm --all --force > /dev/null 2>&1 || true  # containers an interrupted run left in OUT's storage

# The host-wide cleanup; each step cleans up after itself (its own EXIT trap).
cleanup() {
  set +e
  # runc's cgroups (cgroupfs manager) outlive the containers: remove the ones this run created.
  if [ -z "$cgroups_before" ]; then
    for group in /sys/fs/cgroup/*/libpod_parent; do
      [ -d "$group" ] && find "$group" -depth -type d -exec rmdir {} + 2> /dev/null
    done
  fi
  for target in /var/tmp /run /var/lib; do umount "$target" 2> /dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ' | cut -c1-400)" >> "$steps"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
passed() { awk -F'\t' -v s="$1" '$1 == s && $2 == "ok" {found = 1} END {exit !found}' "$steps"; }
note() { echo "$2" > "$logs/$1.note"; }
skip() { record "$1" skipped 0 "$2"; }

# step NAME COMMAND...: runs it in a subshell with `set -e`, its output in logs/NAME.log, and records the
# outcome (and the note the step left). Call it on its own, never in a condition: bash ignores `set -e`
# in anything called from an `if`, `||` or `&&`, subshells included. Query the outcome with `passed NAME`.
step() {
  local name=$1 start status
  shift
  start=$(now)
  echo "== $name" >&2
  set +e
  (set -e; trap 'exit 130' INT; trap 'exit 143' TERM; "$@") > "$logs/$name.log" 2>&1
  status=$?
  set -e
  if [ $status = 0 ]; then
    record "$name" ok "$(since "$start")" "$(cat "$logs/$name.note" 2> /dev/null || true)"
  else
    local reason log="$logs/$name.log"
    reason=$(grep -E -i 'error|denied|not permitted|failed|assert' "$log" | tail -1 || tail -1 "$log")
    record "$name" failed "$(since "$start")" "$reason"
  fi
}

make_base() {
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$out/base-rootfs" "$mirror"
  tar -C "$out/base-rootfs" --numeric-owner -cf "$out/base.tar" .
  rm -rf "$out/base-rootfs"
}

make_context() {
  local context="$out/context"
  mkdir -p "$context"
  local code=(Containerfile pyproject.toml README.md launch.py fpclass configs)
  if [ -n "$ref" ]; then
    git -C "$repo" archive "$ref" "${code[@]}" | tar -C "$context" -xf -
  else
    tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - "${code[@]}" | tar -C "$context" -xf -
  fi
  mkdir "$context/model"
  tar -C "$workdir" --exclude=./.fpclass.lock -cf - . | tar -C "$context/model" -xf -
  local source=${ref:-the working tree}
  [ -z "$ref" ] || source="$ref ($(git -C "$repo" rev-parse --short "$ref"))"
  local code_mib model_mib
  code_mib=$(du -sm --exclude=model "$context" | cut -f1) model_mib=$(du -sm "$context/model" | cut -f1)
  note context "code from $source, $code_mib MiB; workdir $model_mib MiB"
}

build() {  # build ISOLATION
  local ca_args=()
  [ -z "$ca_bundle" ] || ca_args=(-v "$ca_bundle:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  "${podman[@]}" --runtime runc build --isolation "$1" --network host "${limits[@]}" "${ca_args[@]}" \
    --build-arg "BASE=$base_tag" --build-arg MODEL=model -t "$tag" -f "$out/context/Containerfile" "$out/context"
  local size
  size=$("${podman[@]}" image inspect "$tag" --format '{{.Size}}')
  note "podman_build$([ "$1" = oci ] || echo "_$1")" "image $size bytes"
}

# check_server NAME URL: /healthz answers ok, and /predict classifies --image into one of /metadata's classes.
check_server() {
  local name=$1 url=$2
  curl -sS --fail-with-body -o "$proof/$name-healthz.json" "${url}healthz"
  curl -sS --fail-with-body -o "$proof/$name-metadata.json" "${url}metadata"
  curl -sS --fail-with-body -o "$proof/$name-predict.json" -F "file=@$image" "${url}predict"
  python3 - "$proof/$name" << 'EOF'
import json, sys
prefix = sys.argv[1]
health, meta, answer = (json.load(open(f'{prefix}-{part}.json')) for part in ('healthz', 'metadata', 'predict'))
assert health['status'] == 'ok', health
assert answer['class'] in meta['class_names'], (answer, meta['class_names'])
assert abs(sum(answer['probabilities'].values()) - 1) < 1e-5, answer
print(f"{health['model']}: {answer['predictions'][0]['file']} -> class {answer['class']} {answer['probabilities']}")
EOF
}

# wait_for_url ALIVE COMMAND...: the URL the server prints once it is warmed (COMMAND shows its log), with
# 0.0.0.0 replaced by loopback; fails as soon as the command ALIVE says the server has exited.
wait_for_url() {
  local alive=$1 url='' deadline=$((SECONDS + 600))
  shift
  while [ -z "$url" ]; do
    [ $SECONDS -lt $deadline ] || { echo 'no server URL within 600 s' >&2; return 1; }
    sleep 1
    url=$("$@" 2>&1 | grep -o -m1 'http://[0-9.]*:[0-9]*/' || true)
    if [ -z "$url" ] && ! $alive; then
      "$@" 2>&1 | tail -5 >&2
      echo 'the server exited before it served' >&2
      return 1
    fi
  done
  echo "${url/0.0.0.0/127.0.0.1}"
}

container_defaults() {
  "${podman[@]}" run --rm --network host --entrypoint /bin/true "$tag"
}

# The servers' steps keep what their EXIT traps read in globals (a trap runs after the function's locals are
# gone); each step is a subshell of its own, so nothing leaks into the next.
container_running() { [ "$("${podman[@]}" inspect "$id" --format '{{.State.Running}}')" = true ]; }
chroot_running() { kill -0 "$server" 2> /dev/null; }

container_serve() {
  local url start code
  # Host network: no CNI or netavark rules on the host. Port 0 (appended, so it wins) avoids a taken port;
  # the image's own 0.0.0.0 binding with allow_remote stays as it is.
  id=$("${podman[@]}" --runtime runc run -d --network host "${limits[@]}" "$tag" --config.serve.port=0)
  trap 'set +eu; "${podman[@]}" logs "$id" > "$proof/container-server.log" 2>&1
        "${podman[@]}" rm -f "$id" > /dev/null' EXIT
  url=$(wait_for_url container_running "${podman[@]}" logs "$id")
  check_server container "$url"
  start=$(now)
  "${podman[@]}" stop -t 30 "$id" > /dev/null
  code=$("${podman[@]}" inspect "$id" --format '{{.State.ExitCode}}')
  note container_serve "served $url; podman stop took $(since "$start") s, exit status $code"
}

# The image's configuration as bash assignments: user, dir, envs and entry (from podman image inspect).
image_config() {
  "${podman[@]}" image inspect "$tag" --format '{{json .Config}}' | python3 -c '
import json, shlex, sys
c = json.load(sys.stdin)
words = lambda items: "(" + " ".join(shlex.quote(i) for i in items) + ")"
print("user=" + shlex.quote(c.get("User") or "root"), "dir=" + shlex.quote(c.get("WorkingDir") or "/"))
print("envs=" + words(c.get("Env") or []))
print("entry=" + words((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))'
}

# Stops the chroot's server, unmounts in reverse order and drops the container (on success, failure or a signal).
chroot_teardown() {
  set +eu
  [ -z "$server" ] || kill -KILL "$server" 2> /dev/null
  wait
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}"; done
  "${podman[@]}" umount "$container" > /dev/null
  "${podman[@]}" rm "$container" > /dev/null
  set -eu
}

chroot_serve() {
  local user dir envs entry uid gid url start code=0
  server='' mounts=()
  # A container's root filesystem (the image's layers plus its own writable layer), mounted without a runtime.
  container=$("${podman[@]}" create "$tag")
  trap chroot_teardown EXIT
  root=$("${podman[@]}" mount "$container")
  eval "$(image_config)"
  uid=$(awk -F: -v u="$user" '$1 == u {print $3}' "$root/etc/passwd")
  gid=$(awk -F: -v u="$user" '$1 == u {print $4}' "$root/etc/passwd")
  mount -t proc proc "$root/proc"
  mounts+=("$root/proc")
  mount -t sysfs -o ro sysfs "$root/sys"
  mounts+=("$root/sys")
  # A fresh /dev with the few nodes a Python server uses, rather than the host's /dev.
  mount -t tmpfs -o mode=755,nosuid dev "$root/dev"
  mounts+=("$root/dev")
  mknod -m 666 "$root/dev/null" c 1 3
  mknod -m 666 "$root/dev/zero" c 1 5
  mknod -m 666 "$root/dev/random" c 1 8
  mknod -m 666 "$root/dev/urandom" c 1 9
  mkdir "$root/dev/shm"
  mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
  mounts+=("$root/dev/shm")
  mount -t tmpfs -o mode=1777 tmp "$root/tmp"
  mounts+=("$root/tmp")
  # The image's entrypoint, as its user, in its folder, with its environment, bound to loopback on a free
  # port. A script's background job ignores SIGINT; the server gets the default back, as in a container.
  # shellcheck disable=SC2016
  env --default-signal=INT chroot --userspec="$uid:$gid" "$root" /usr/bin/env -i "${envs[@]}" HOME="/home/$user" \
    /bin/sh -c 'cd "$0" && exec "$@"' "$dir" "${entry[@]}" --config.serve.host=127.0.0.1 --config.serve.port=0 \
    > "$proof/chroot-server.log" 2>&1 &
  server=$!
  url=$(wait_for_url chroot_running cat "$proof/chroot-server.log")
  check_server chroot "$url"
  start=$(now)
  kill -INT "$server"
  wait "$server" || code=$?
  server=''
  trap - EXIT
  chroot_teardown
  if grep -F " $root" /proc/self/mountinfo; then echo "mounts left under $root" >&2; return 1; fi
  note chroot_serve "served $url as uid $uid; SIGINT stopped it in $(since "$start") s, exit status $code"
}

oci_archive() {
  "${podman[@]}" save --format oci-archive -o "$out/fpclass-serve.oci.tar" "$tag"
  skopeo inspect --config "oci-archive:$out/fpclass-serve.oci.tar" > "$proof/oci-config.json"
  python3 - "$proof/oci-config.json" << 'EOF'
import json, sys
config = json.load(open(sys.argv[1]))['config']
assert config['Entrypoint'][:4] == ['python', 'launch.py', '--workdir=/model', '--mode=serve'], config
print(config)
EOF
  note oci_archive "$(du -m "$out/fpclass-serve.oci.tar" | cut -f1) MiB archive"
}

if [ $reuse_base = 1 ] && [ -f "$out/base.tar" ]; then
  skip debootstrap "reused $out/base.tar"
else
  rm -f "$out/base.tar"
  step debootstrap make_base
fi
if [ -f "$out/base.tar" ]; then
  step podman_import "${podman[@]}" import "$out/base.tar" "$base_tag"
fi
step context make_context
if passed podman_import && passed context; then
  step podman_build build oci
  if ! passed podman_build; then
    step podman_build_chroot build chroot
  fi
fi
if passed podman_build || passed podman_build_chroot; then
  step container_defaults container_defaults
  step container_serve container_serve
  step chroot_serve chroot_serve
  step oci_archive oci_archive
else
  for name in container_defaults container_serve chroot_serve oci_archive; do skip $name 'no image was built'; done
fi

column -t -s $'\t' "$steps" >&2 || cat "$steps" >&2
(passed container_serve || passed chroot_serve) && passed oci_archive
