#!/usr/bin/env bash
# Interleaved A/B runs of the L7 benchmark for two (or more) builds of the agent: on the
# shared 2-vCPU VMs one run against another minutes later moves by 5-20 %, more than most
# single changes, so compare binaries run by run (A B A B ...), not table against table.
#
#   benches/ab.sh ROUNDS LOADS TARGET BINARY...
#   benches/ab.sh 3 http1,http2 myelin-mesh /tmp/myelin-before target/release/myelin
#
# Prints one table row per run, prefixed with the binary's path; compare the CPU per request
# (6th column) pair by pair; the bench's progress goes to stderr. Needs a release build of
# myelin-l7-bench and root.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
rounds=$1 loads=$2 target=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
bench=$here/target/release/myelin-l7-bench
for b in "$@"; do
  [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done
for _ in $(seq "$rounds"); do
  for b in "$@"; do
    MYELIN_BIN=$(realpath "$b") "$bench" --rounds 1 --duration 6 --warmup 2 \
      --targets "$target" --loads "$loads" \
      | grep -E '^\| (http1|http2|open-loop) ' | sed "s|^|$b |"
  done
done
