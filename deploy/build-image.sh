#!/usr/bin/env bash
# Build the Switchboard runtime image without pulling any base image: a `FROM scratch`
# image holding the binary, the shared libraries it links (found with ldd), the dynamic
# loader, /etc/passwd and /etc/group with the non-root user `switchboard` (uid/gid 10001)
# and an empty /var/lib/switchboard owned by that user.
#
#   deploy/build-image.sh                    # -> switchboard:local
#   deploy/build-image.sh -t myreg/sb:1.2    # another tag
#
# Environment:
#   SWITCHBOARD_BIN    the binary to package (default: target/release/switchboard if it
#                      exists, else target/debug/switchboard)
#   SWITCHBOARD_IMAGE  the tag (default switchboard:local; -t overrides)
#   STRIP              debug (default: drop debug info, keep symbols for backtraces),
#                      all (smallest), none (as built)
#   KEEP_CONTEXT=1     leave the build context in place and print its path
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "${here}/.." && pwd)"

tag="${SWITCHBOARD_IMAGE:-switchboard:local}"
while (($#)); do
    case "$1" in
    -t | --tag)
        tag="$2"
        shift 2
        ;;
    -h | --help)
        sed -n '2,17p' "$0"
        exit 0
        ;;
    *)
        echo "build-image.sh: unknown argument $1" >&2
        exit 2
        ;;
    esac
done

bin="${SWITCHBOARD_BIN:-}"
if [ -z "${bin}" ]; then
    if [ -x "${root}/target/release/switchboard" ]; then
        bin="${root}/target/release/switchboard"
        if [ "${root}/target/debug/switchboard" -nt "${bin}" ]; then
            echo "build-image.sh: warning: packaging ${bin}, older than target/debug/switchboard" \
                "(cargo build --release -p nodes, or SWITCHBOARD_BIN=target/debug/switchboard)" >&2
        fi
    else
        bin="${root}/target/debug/switchboard"
    fi
fi
case "${bin}" in /*) ;; *) bin="${root}/${bin}" ;; esac
if [ ! -x "${bin}" ]; then
    echo "build-image.sh: no switchboard binary at ${bin}" \
        "(cargo build --release -p nodes, or set SWITCHBOARD_BIN)" >&2
    exit 1
fi
for tool in docker ldd tar; do
    command -v "${tool}" >/dev/null || {
        echo "build-image.sh: ${tool} not found" >&2
        exit 1
    }
done

ctx="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-image.XXXXXX")"
if [ "${KEEP_CONTEXT:-0}" != 1 ]; then
    trap 'rm -rf "${ctx}"' EXIT
fi
rootfs="${ctx}/rootfs"
mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/etc" "${rootfs}/var/lib/switchboard" "${rootfs}/tmp"

# The binary, stripped of what a runtime image does not need.
cp "${bin}" "${rootfs}/usr/local/bin/switchboard"
case "${STRIP:-debug}" in
debug) objcopy --strip-debug "${rootfs}/usr/local/bin/switchboard" ;;
all) strip "${rootfs}/usr/local/bin/switchboard" ;;
none) ;;
*)
    echo "build-image.sh: STRIP must be debug, all or none" >&2
    exit 2
    ;;
esac
chmod 0755 "${rootfs}/usr/local/bin/switchboard"

# Shared libraries and the loader, at the paths the binary asks for (dereferenced: the
# image has no symlink farm). Lines look like
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
#   /lib64/ld-linux-x86-64.so.2 (0x...)
libs=()
while read -r line; do
    case "${line}" in
    *"=> not found"*)
        echo "build-image.sh: ${bin} needs a library that is missing: ${line}" >&2
        exit 1
        ;;
    *"=> /"*) libs+=("$(echo "${line}" | sed -E 's/.*=> ([^ ]+).*/\1/')") ;;
    /*) libs+=("$(echo "${line}" | awk '{print $1}')") ;;
    esac
done < <(ldd "${bin}")
if ! printf '%s\n' "${libs[@]}" | grep -q '/ld-linux'; then
    echo "build-image.sh: ldd named no dynamic loader for ${bin} (static binary?)" >&2
fi
for lib in "${libs[@]}"; do
    mkdir -p "${rootfs}$(dirname "${lib}")"
    cp -L "${lib}" "${rootfs}${lib}"
done

# A non-root user; no shell, no home but the data directory.
cat >"${rootfs}/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
switchboard:x:10001:10001:switchboard:/var/lib/switchboard:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"${rootfs}/etc/group" <<'EOF'
root:x:0:
switchboard:x:10001:
nogroup:x:65534:
EOF
# getaddrinfo consults these (DNS names of the other nodes; "localhost").
cat >"${rootfs}/etc/nsswitch.conf" <<'EOF'
hosts: files dns
EOF

# One tarball so ownership is exact whatever builder runs (the legacy builder's COPY
# would make everything root's): root owns everything but the data directory.
(
    cd "${rootfs}"
    tar --create --file "${ctx}/rootfs.tar" --numeric-owner --owner=0 --group=0 \
        --sort=name --mtime=@0 --exclude=./var/lib/switchboard --exclude=./tmp .
    tar --append --file "${ctx}/rootfs.tar" --numeric-owner --owner=0 --group=0 \
        --mode=1777 --no-recursion --mtime=@0 ./tmp
    tar --append --file "${ctx}/rootfs.tar" --numeric-owner --owner=10001 --group=10001 \
        --mode=0700 --no-recursion --mtime=@0 ./var/lib/switchboard
)
cp "${here}/Dockerfile" "${ctx}/Dockerfile"

# No buildx here means the legacy builder; say so rather than let the client warn.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
if ! docker build --quiet -t "${tag}" "${ctx}" >"${ctx}/build.log" 2>&1; then
    cat "${ctx}/build.log" >&2
    echo "build-image.sh: docker build failed" >&2
    exit 1
fi
size="$(docker image inspect -f '{{.Size}}' "${tag}")"
echo "built ${tag} from ${bin} ($((size / 1024 / 1024)) MiB, ${size} bytes)"
if [ "${KEEP_CONTEXT:-0}" = 1 ]; then
    echo "build context kept in ${ctx}"
fi
