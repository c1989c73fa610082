#!/usr/bin/env bash
# The standalone demo: installs what is missing, builds the agent, then builds a node of
# network namespaces on this machine, runs traffic through the mesh and prints the summary.
# Extra arguments go to `myelin demo` (e.g. --json, --no-splice).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p myelin -p myelin-testbed --bins
exec target/release/myelin demo "$@"
