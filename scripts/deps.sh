#!/usr/bin/env bash
# Installs the Debian packages paramex needs to build and test. This is the ONE place that
# lists them; scripts/demo.sh and scripts/test.sh call it first.
#
# Fast path: when dpkg says every package is installed (for this machine's architecture
# or "all"), apt is not touched at all. Otherwise it runs `apt-get update` and
# `apt-get install -y --no-install-recommends` for the missing ones, as root (through sudo
# when not root).
# Usage: scripts/deps.sh [--bench]   (--bench adds what bench/ runs beside paramex)
set -euo pipefail

bench=0
for arg in "$@"; do
  case $arg in
    --bench) bench=1 ;;
    *) echo "deps.sh: unknown argument '$arg' (usage: scripts/deps.sh [--bench])" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential      # gcc, libc headers, make; libasan/libubsan for the sanitizer build
  pkg-config           # meson finds grpc, protobuf-c, zstd, xxhash, cmocka through it
  meson
  ninja-build
  libgrpc-dev          # gRPC C core: the transport (common/rpc/)
  libssl-dev           # OpenSSL (gRPC's TLS): why a handshake failed (common/tls/)
  openssl              # the tests generate their certificates with it
  protobuf-c-compiler  # protoc-c: control-plane codecs generated at build time
  libprotobuf-c-dev
  protobuf-compiler    # protoc, which nanopb_generator.py runs to parse the .proto
  nanopb               # nanopb_generator.py: data-plane codecs generated at build time
  libnanopb-dev
  python3              # runs nanopb_generator.py; scripts parse JSON with it
  python3-protobuf     # imported by nanopb_generator.py
  python3-dev          # Python.h: the paramex Python package's extension (python/)
  python3-numpy        # the Python tests' arrays
  python3-pytest       # runs python/tests
  python3-torch        # paramex.torch and its tests (PyTorch 1.13, CPU)
  python3-sklearn      # the digits data set of examples/python/train_digits.py (shipped with it)
  libzstd-dev          # diff compression
  libxxhash-dev        # chunk checksums
  libcmocka-dev        # unit and integration tests
  libjansson-dev       # JSON: safetensors checkpoint headers, stats output
  libmicrohttpd-dev    # the server's /metrics endpoint (HTTP, and HTTPS through GnuTLS)
  prometheus           # a real Prometheus scrapes paramex in the tests; promtool checks rules
  python3-prometheus-client  # the metrics tests parse the exposition format with it
  openmpi-bin          # mpirun: paramex-launch --backend mpi (and bench/'s MPI baseline)
  slurm-wlm            # paramex-launch --backend slurm, tested on a two-node local cluster
  munge                # Slurm's authentication (the test cluster's own key and socket)
  clang                # libFuzzer targets (tests/fuzz), run briefly by scripts/test.sh
  libclang-rt-14-dev   # clang's sanitizer and libFuzzer runtimes
)
# tests/k8s (manifest validation) needs node + npm and kubectl; this machine may have
# newer ones installed otherwise (Debian's kubernetes-client and kubectl packages conflict)
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
if ((bench)); then
  packages+=(
    iperf3             # loopback TCP baseline measured in the same run as paramex
    libopenmpi-dev     # mpicc and mpi.h for bench/baseline_mpi.c
    gnuplot-nox        # bench/plot draws the PNGs with it
    iproute2           # ip netns, veth and tc for paramex-bench --link
  )
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: not a Debian system (no dpkg-query/apt-get); make sure these are installed:" \
       "${packages[*]}" >&2
  exit 0
fi

# Exact check: a package counts only when dpkg's status is "installed" and its
# architecture is this machine's or "all" (not half-installed, not config-files only,
# not only a foreign-architecture copy).
native_arch=$(dpkg --print-architecture)
declare -A installed=()
while read -r name arch status; do
  if [[ $status == installed && ( $arch == "$native_arch" || $arch == all ) ]]; then
    installed[$name]=1
  fi
done < <(dpkg-query -W -f='${Package} ${Architecture} ${db:Status-Status}\n' \
           "${packages[@]}" 2>/dev/null || true)

missing=()
for p in "${packages[@]}"; do
  [[ -n ${installed[$p]:-} ]] || missing+=("$p")
done

# tests/k8s/node_modules: the npm packages of tests/k8s/package-lock.json (kubernetes-models,
# ajv, yaml), installed again only when the lock file changed
npm_packages() {
  local dir
  dir=$(cd "$(dirname "$0")/../tests/k8s" && pwd)
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.paramex-lock" 2>/dev/null; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) &&
      cp "$dir/package-lock.json" "$dir/node_modules/.paramex-lock"
  fi
}

if ((${#missing[@]} == 0)); then
  npm_packages
  exit 0
fi

echo "deps.sh: installing ${#missing[@]} missing package(s): ${missing[*]}"

as_root=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "deps.sh: not root and no sudo; as root run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps.sh: installed ${missing[*]}"
npm_packages
