#!/usr/bin/env bash
# Installs everything Myelin needs on a fresh machine of this kind (Debian 12,
# root, rustup with stable + nightly). Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
# llvm-22-dev: bpf-linker; curl, wrk, nghttp2-client, python3: real clients in tests and
# benchmarks; nginx: the benchmark's server; iproute2, util-linux (nsenter): the test bed;
# prometheus: promtool and a real scrape (L7 issue); nghttp2-server (nghttpd),
# python3-grpcio, python3-websockets, python3-h2: the L7 suite's HTTP/2 server, gRPC and
# WebSocket clients and servers, WebSocket over HTTP/2 (conformance/tests/suites/l7.rs; the Python
# ones run on /usr/bin/python3);
# haproxy: the L7 benchmark's second reference proxy (benches, `myelin-l7-bench`);
# tcpdump: the mTLS suite checks that nothing crosses the link between nodes in the clear;
# bolt-22: llvm-bolt, for `BOLT=1 benches/pgo.sh` (an optional layout pass over the PGO agent).
for pkg in llvm-22-dev curl python3 iproute2 util-linux wrk nghttp2-client nginx prometheus \
    nghttp2-server python3-grpcio python3-websockets python3-h2 haproxy tcpdump bolt-22; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "setup: the nightly toolchain is missing (the kernel programs build with nightly and build-std)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "setup: rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  echo "setup: cargo install bpf-linker (about 4 minutes)"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --locked --no-default-features --features llvm-22
fi

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  echo "setup: cargo install cargo-fuzz (the fuzz targets run in the test command)"
  cargo install cargo-fuzz --locked
fi

# bpffs: the loader pins programs and maps under /sys/fs/bpf/myelin.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf
fi
