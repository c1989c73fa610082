#!/usr/bin/env bash
# Where the agent's CPU goes under one load of the L7 benchmark: runs the benchmark for one
# Myelin target and load, samples the agent with perf in the middle of the run, and prints
# the shares of its samples: the kernel by socket call and side (upstream: the HTTP/1.1
# client's socket; downstream: the client's connection), user space by owner (the first
# frame from the leaf that belongs to a crate or function named below).
#
#   benches/profile.sh LOAD [BINARY] [OUT]
#   benches/profile.sh http2 target/release/myelin /tmp/prof
#
# LOAD is http1, http2 or open-loop; the target is myelin-mesh (MYELIN_TARGET=myelin for the
# loopback hop). Leaves OUT.data (perf record), OUT.txt (perf script) and OUT.bench (the
# benchmark's table). Needs root, a release build of myelin-l7-bench, perf (Debian package
# linux-perf) and python3. perf samples the software clock (VMs have no hardware counters)
# with DWARF call graphs; stacks deeper than 16 KiB are cut, so the outer frames' inclusive
# shares are low, the leaf-side attribution printed here is not.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
load=$1
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${2:-$here/target/release/myelin}")
out=${3:-/tmp/myelin-profile}
target=${MYELIN_TARGET:-myelin-mesh}
command -v perf > /dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 2; }
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }

# The agent's code stays on its file mapping (dataplane/src/hugetext.rs): perf symbolizes
# through the file, and the anonymous copy on huge pages has none.
MYELIN_HUGE_TEXT=0 MYELIN_BIN=$bin "$here/target/release/myelin-l7-bench" --rounds 1 --duration 14 --warmup 2 \
  --targets "$target" --loads "$load" > "$out.bench" &
bench=$!
pid=
for _ in $(seq 120); do
  sleep 0.5
  pid=$(pgrep -f "^$bin " | head -1 || true)
  [ -n "$pid" ] && break
done
[ -n "$pid" ] || { echo "the agent did not start" >&2; wait "$bench"; exit 1; }
# Past the warm-up and the start of the measured run.
sleep 7
perf record -F 1999 --call-graph dwarf,16384 -p "$pid" -o "$out.data" -- sleep 4 > /dev/null 2>&1
wait "$bench"
grep -E '^\| (http1|http2|open-loop) ' "$out.bench" || true
perf script -i "$out.data" 2> /dev/null > "$out.txt"

python3 - "$out.txt" << 'EOF'
import collections, re, sys

OWNERS = [
    "h2::hpack", "h2::codec", "h2::frame", "h2::proto::streams", "h2::proto", "h2::server",
    "hyper::", "tokio::runtime::io", "tokio::runtime::time", "tokio::time", "tokio::runtime",
    "futures_util::stream::futures_unordered", "prometheus_client", "httparse",
    "http::header", "http::", "bytes::", "tracing",
]

def frames(sample):
    out = []
    for line in sample.strip().split("\n")[1:]:
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            out.append((re.sub(r"\+0x[0-9a-f]+ \(.*", "", parts[1]), "[kernel" in line))
    return out

def owner(sym):
    sym = re.sub(r"^<(.*?) as .*?>::", r"\1::", sym).lstrip("<")
    if sym.startswith("myelin_proxy::"):
        return re.sub(r"::\{\{closure\}\}", "", sym)[:70]
    return next((p for p in OWNERS if sym.startswith(p)), None)

def syscall(syms):
    """The system call a kernel sample is in: the frame the syscall entry called."""
    if "do_syscall_64" not in syms:
        return "interrupt or other"
    called = [s for s in syms[: syms.index("do_syscall_64")] if s != "x64_sys_call"]
    if not called:
        return "syscall entry and exit"
    return re.sub(r"^(__x64_sys_|__sys_|ksys_|do_)", "", called[-1])

kernel, user, total = collections.Counter(), collections.Counter(), 0
for sample in open(sys.argv[1]).read().split("\n\n"):
    fr = frames(sample)
    if not fr:
        continue
    total += 1
    syms = [s for s, _ in fr]
    joined = " ".join(syms)
    if fr[0][1]:
        call = syscall(syms)
        side = ("upstream" if "h1client" in joined
                else "downstream" if re.search(r"h2::|hyper::|h2server|h1server", joined)
                else "?")
        kernel[f"{call} ({side})"] += 1
    else:
        user[next((o for o in map(owner, syms) if o), "other: " + syms[0][:50])] += 1

if not total:
    sys.exit("no samples")
pct = lambda n: 100.0 * n / total
print(f"\n{total} samples; kernel {pct(sum(kernel.values())):.1f}%, user {pct(sum(user.values())):.1f}%")
print("\nkernel, by system call (side):")
for k, n in kernel.most_common(12):
    print(f"  {pct(n):5.1f}%  {k}")
print("\nuser space, by owner:")
for k, n in user.most_common(40):
    print(f"  {pct(n):5.1f}%  {k}")
EOF
