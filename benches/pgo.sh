#!/usr/bin/env bash
# Builds the agent with profile-guided optimisation on top of the `dist` profile: an
# instrumented dist build, trained by the L7 benchmark's loads through the agent, the profile
# merged with the toolchain's own llvm-profdata, and a dist build that uses it.
#
#   benches/pgo.sh [TRAINING_TARGETS [TRAINING_LOADS]]
#   benches/pgo.sh myelin,myelin-mesh http1,http2,open-loop    (the defaults)
#
# With BOLT=1, that build, linked with its relocations kept, is then laid out again by BOLT
# (llvm-bolt, Debian package bolt-22, which scripts/setup.sh installs): instrumented, trained
# by the same loads, and rewritten from that profile (hot code together, cold code split off).
# Off by default: in interleaved runs it saved ~2 % of the mesh HTTP/2 hop's CPU per request
# (median pair) and nothing measurable over HTTP/1.1 (benches/RESULTS.md, 2026-12-03 16:45).
#
# Leaves the agent at target/pgo/myelin and the merged profile at target/pgo/merged.profdata;
# with BOLT=1 also the PGO-only build at target/pgo/myelin-pgo and BOLT's profile at
# target/pgo/bolt/merged.fdata.
# Needs root (the benchmark builds a node) and a release build of myelin-l7-bench; installs
# the rustup component llvm-tools when missing (its llvm-profdata reads what this rustc's LLVM
# writes; another LLVM's may not).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
targets=${1:-myelin,myelin-mesh}
loads=${2:-http1,http2,open-loop}
work=$here/target/pgo
bench=$here/target/release/myelin-l7-bench
[ -x "$bench" ] || { echo "build it first: cargo build --release --locked -p myelin-benches" >&2; exit 2; }

triple=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$triple/bin/llvm-profdata
[ -x "$profdata" ] || rustup component add llvm-tools
# Keyed by the host triple and built with an explicit --target, the flags reach only the
# agent's own artifacts: build scripts and proc macros stay uninstrumented (they would write
# profiles of their own while building), and the bpfel build that aya-build starts is untouched.
flags=CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
# Cargo prefers RUSTFLAGS (and its encoded form) over the target-keyed variable: with either
# set, both builds would silently come out without PGO.
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
  echo "pgo: unset RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS first (they override $flags)" >&2
  exit 2
fi
build() { # DIR RUSTFLAGS
  env "$flags=$2" CARGO_TARGET_DIR="$1" \
    cargo build --profile dist --locked -p myelin --target "$triple" >&2
}

bolt_bin=
if [ "${BOLT:-0}" = 1 ]; then
  # Resolved to its LLVM's bin directory, where merge-fdata is too.
  bolt_bin=$(command -v llvm-bolt || { ls -1 /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null || true; } | sort -V | tail -1)
  [ -z "$bolt_bin" ] || bolt_bin=$(realpath "$bolt_bin")
  [ -x "$bolt_bin" ] || { echo "pgo: BOLT=1 needs llvm-bolt (scripts/setup.sh installs bolt-22)" >&2; exit 2; }
fi

rm -rf "$work/raw"
mkdir -p "$work/raw"
build "$work/gen" "-Cprofile-generate=$work/raw"
# The agent writes its profile when it exits, and the benchmark stops it with SIGTERM, which
# it answers by returning from main. One attempt per run: training needs the code paths
# taken, not a quiet measurement.
train() { # AGENT REPORT
  echo "pgo: training $1 on $targets x $loads" >&2
  MYELIN_BIN=$1 "$bench" --rounds 1 --duration 6 --warmup 2 \
    --attempts 1 --targets "$targets" --loads "$loads" > "$2"
}
train "$work/gen/$triple/dist/myelin" "$work/training.md"
compgen -G "$work/raw/*.profraw" > /dev/null \
  || { echo "pgo: the training wrote no profile to $work/raw" >&2; exit 1; }
"$profdata" merge -o "$work/merged.profdata" "$work/raw"
use_flags=-Cprofile-use=$work/merged.profdata
# BOLT rewrites functions in place only with the link's relocations at hand (`-q`).
if [ -n "$bolt_bin" ]; then use_flags+=" -Clink-arg=-Wl,--emit-relocs"; fi
build "$work/use" "$use_flags"
if [ -z "$bolt_bin" ]; then
  cp "$work/use/$triple/dist/myelin" "$work/myelin"
  echo "pgo: $work/myelin" >&2
  exit 0
fi

cp "$work/use/$triple/dist/myelin" "$work/myelin-pgo"
rm -rf "$work/bolt"
mkdir -p "$work/bolt"
# The instrumented agent writes its counters when it exits (one file per process).
"$bolt_bin" "$work/myelin-pgo" -instrument -o "$work/bolt/myelin-inst" \
  --instrumentation-file="$work/bolt/prof" --instrumentation-file-append-pid >&2
train "$work/bolt/myelin-inst" "$work/bolt/training.md"
compgen -G "$work/bolt/prof.*" > /dev/null \
  || { echo "pgo: the BOLT training wrote no profile to $work/bolt" >&2; exit 1; }
"$(dirname "$bolt_bin")/merge-fdata" "$work"/bolt/prof.* > "$work/bolt/merged.fdata"
"$bolt_bin" "$work/myelin-pgo" -o "$work/myelin" -data="$work/bolt/merged.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=all -use-gnu-stack -update-debug-sections -dyno-stats >&2
echo "pgo: $work/myelin (PGO and BOLT; PGO alone: $work/myelin-pgo)" >&2
