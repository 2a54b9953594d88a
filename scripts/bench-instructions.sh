#!/usr/bin/env bash
# Instructions per message on the embedded queue, counted by valgrind's callgrind: unlike CPU
# time, the same for the same binary whatever else the machine is doing, so two builds can be
# compared on a shared machine. Runs the embedded part of `benches/worker.rs` in its quick mode
# (2,500 messages a row on the default runtime, 10,000 on one worker thread) and counts each
# row's drain alone: the bench reads /proc/self/stat just before and just after each drain, and
# callgrind starts a new count at each read. Needs valgrind (Debian's package).
#
#   scripts/bench-instructions.sh [OUT_DIR]   (default target/callgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/callgrind}"
command -v valgrind > /dev/null || { echo "bench-instructions: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
# Line tables so that callgrind_annotate can name what it counts; the code is the same.
bin=$(CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench --locked --bench worker --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "worker" and m.get("executable"):
        print(m["executable"])')
mkdir -p "$out"
rm -f "$out"/instructions.out*
valgrind --tool=callgrind --dump-before='std::fs::read_to_string::inner' \
    --callgrind-out-file="$out/instructions.out" "$bin" > "$out/bench.txt" 2> "$out/valgrind.txt"
python3 - "$out" <<'EOF'
import re, sys
out = sys.argv[1]
rows = [l for l in open(f"{out}/bench.txt") if l.startswith("embedded queue, no-op")]
for i, row in enumerate(rows):
    # Part 2i+1 is the preload before the drain; part 2i+2 the drain itself.
    part = f"{out}/instructions.out.{2 * i + 2}"
    total = next(int(l.split()[1]) for l in open(part) if l.startswith("summary:"))
    messages = int(re.search(r": (\d+) messages", row).group(1))
    label = row.split(":")[0].replace("embedded queue, no-op handler, ", "")
    print(f"{label}: {total / messages:,.0f} instructions a message ({messages} messages; {part})")
EOF
