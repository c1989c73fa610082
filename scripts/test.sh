#!/usr/bin/env bash
# Runs every test of Myelin on a machine of this kind (Debian 12, root, rustup):
# installs what is missing, builds once in release, checks formatting and lints, then runs
# the unit, integration, kernel and conformance tests (the last two need root; under CI=true
# a test that cannot run fails instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's heading says how long the run has taken so far (CI allows 90 minutes).
phase() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

phase "setup"
bash scripts/setup.sh

# A build from a clean clone takes ~11 GiB (target/ with debug info ~10, the fuzz build ~1.2):
# say so first, rather than fail later on a compiler's "No space left on device".
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "$free_kib" -lt $((12 * 1024 * 1024)) ]; then
  echo "test.sh: warning: $((free_kib / 1024)) MiB free here; a build from a clean clone needs ~11 GiB" >&2
fi

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "build (release): agent, podtool, kernel programs"
cargo build --release --locked -p myelin -p myelin-testbed --bins

phase "cargo clippy -D warnings"
cargo clippy --release --locked --all-targets --all-features -- -D warnings

phase "fuzz (bounded): xDS decode + conversion, the HTTP/1.1 codec, the HTTP/2 server, PROXY headers"
# Untrusted bytes must never panic: control-plane resources (xds_convert, 30 s here) and the
# HTTP/1.1 heads and bodies apps and upstreams send (http1_codec, 20 s), the HTTP/2 frames
# apps send to the proxy's own server (http2_server, 20 s), the PROXY protocol headers
# clients send to listeners that read them (proxy_protocol, 10 s). Run longer by hand
# with: cargo +nightly fuzz run --fuzz-dir fuzz -s none <target>
# No sanitizer (`-s none`): the fuzzed crates forbid unsafe code, so AddressSanitizer would
# only watch the dependencies' unsafe code, and it made the targets' build take 15 minutes
# of CI instead of 10 (and each run fewer executions).
mkdir -p target
cargo +nightly fuzz build --fuzz-dir fuzz -s none > target/fuzz-build.log 2>&1 \
  || { tail -n 60 target/fuzz-build.log; exit 1; }
for spec in xds_convert:30 http1_codec:20 http2_server:20 proxy_protocol:10; do
  name=${spec%%:*} secs=${spec##*:}
  if ! cargo +nightly fuzz run --fuzz-dir fuzz -s none "$name" -- -max_total_time="$secs" \
      -rss_limit_mb=4096 > "target/fuzz-$name.log" 2>&1; then
    tail -n 60 "target/fuzz-$name.log"
    echo "fuzz: $name failed (full log: target/fuzz-$name.log)" >&2
    exit 1
  fi
  tail -n 1 "target/fuzz-$name.log"
done

phase "tests"
# One cargo invocation: the unit tests, the proxy's in-process end-to-end tests, the kernel
# load test and the conformance suite (network namespaces, real agent, real clients).
cargo test --release --locked --all-features --no-fail-fast
phase "done"
