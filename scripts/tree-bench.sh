#!/usr/bin/env bash
# Directory trees, both ways, under a KMS key on moto (issue 13), in one run:
#   tree A: FILES_A files of 4 KiB in 100 directories (default 10,000);
#   tree B: FILES_B files of SIZE_B_MIB MiB (default 8 of 128 MiB).
# Against: `cp -r` of the same tree (plain, then followed by `sync`), `aws-encryption-cli
# --recursive` (PyPI aws-encryption-sdk-cli, installed into a venv under target/), and the
# ceiling of the KMS endpoint itself: boto3 issuing GenerateDataKey at the same concurrency.
# kms-envelope is measured with an fsync per file (the default), with one syncfs at the end
# (--sync-at-end) and with the data-key cache (suite 0x0478, no --context-path, --sync-at-end).
# Files/s, MB/s, peak RSS (/usr/bin/time -v); median of RUNS runs. Also checks interop: a tree
# written by aws-encryption-cli decrypts with `decrypt -r`, and the other way.
# Usage: scripts/tree-bench.sh [FILES_A] [FILES_B] [SIZE_B_MIB] [RUNS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
files_a=${1:-10000}
files_b=${2:-8}
size_b=${3:-128}
runs=${4:-1}
jobs=${5:-16}

[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'
venv="$PWD/target/tree-bench-venv"
if [ ! -x "$venv/bin/aws-encryption-cli" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet aws-encryption-sdk-cli
fi
cargo build --release --quiet --bin kms-envelope
bin="$PWD/target/release/kms-envelope"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -c 'import sys; from moto.server import main; main(["-H","127.0.0.1","-p",sys.argv[1]])' "$port" \
    >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
    AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="http://127.0.0.1:$port"
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null; do
    sleep 0.2
done
key=$(python3 -c 'import boto3; print(boto3.client("kms").create_key()["KeyMetadata"]["Arn"])')

# The trees.
mkdir -p "$work/A" "$work/B"
python3 - "$work/A" "$files_a" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(4096))
EOF
for i in $(seq "$files_b"); do
    head -c $((size_b << 20)) /dev/urandom >"$work/B/big$i"
done
cat "$work"/B/* >/dev/null

# The endpoint's ceiling: GenerateDataKey from boto3 at the same concurrency.
ceiling=$(python3 - "$key" "$jobs" <<'EOF'
import sys, time, threading, boto3
from concurrent.futures import ThreadPoolExecutor
key, jobs = sys.argv[1], int(sys.argv[2])
local = threading.local()
def call(_):
    if not hasattr(local, "c"):
        local.c = boto3.client("kms")
    local.c.generate_data_key(KeyId=key, KeySpec="AES_256")
with ThreadPoolExecutor(jobs) as ex:
    list(ex.map(call, range(jobs * 4)))  # clients made, connections open
    n = 2000
    t = time.monotonic()
    list(ex.map(call, range(n)))
    print(f"{n / (time.monotonic() - t):.0f}")
EOF
)

# run NAME FILES BYTES CMD...: median seconds over RUNS runs (the output tree removed and the
# disk synced before each), then files/s, MB/s and peak RSS.
results=()
run() {
    local name=$1 files=$2 bytes=$3; shift 3
    local times=() rss=0
    for _ in $(seq "$runs"); do
        rm -rf "$work/out" "$work/out2"
        mkdir -p "$work/out"
        sync
        /usr/bin/time -v -o "$work/tv" "$@" >"$work/last.log" 2>&1 || {
            echo "$name failed:" >&2; tail -5 "$work/last.log" >&2; exit 1; }
        times+=("$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/tv")")
        r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/tv")
        [ "$r" -gt "$rss" ] && rss=$r
    done
    local median
    median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    results+=("$(awk -v n="$name" -v s="$median" -v f="$files" -v b="$bytes" -v r="$rss" \
        'BEGIN { printf "%-34s %8.2f %10.0f %9.1f %8.1f", n, s, f/s, b/1e6/s, r/1024 }')")
}

k=(--key "$key" -q)
aec=("$venv/bin/aws-encryption-cli" -S --wrapping-keys "key=$key" --recursive)
bytes_a=$((files_a * 4096))
bytes_b=$((files_b * size_b << 20))

# Tree A.
run "A cp -r" "$files_a" "$bytes_a" cp -r "$work/A/." "$work/out"
run "A cp -r + sync" "$files_a" "$bytes_a" sh -c 'cp -r "$1/." "$2" && sync' sh "$work/A" "$work/out"
run "A encrypt -r (fsync per file)" "$files_a" "$bytes_a" "$bin" encrypt -r "${k[@]}" --jobs "$jobs" -i "$work/A" -o "$work/out"
run "A encrypt -r --sync-at-end" "$files_a" "$bytes_a" "$bin" encrypt -r "${k[@]}" --jobs "$jobs" --sync-at-end -i "$work/A" -o "$work/out"
run "A encrypt -r cache, --sync-at-end" "$files_a" "$bytes_a" "$bin" encrypt -r "${k[@]}" --jobs "$jobs" --sync-at-end \
    --cache-max-messages 100000 --cache-max-age 600 --cache-max-bytes 100000000000 -i "$work/A" -o "$work/out"
"$bin" encrypt -r "${k[@]}" --jobs "$jobs" --sync-at-end -i "$work/A" -o "$work/A.enc"
run "A decrypt -r --sync-at-end" "$files_a" "$bytes_a" "$bin" decrypt -r "${k[@]}" --jobs "$jobs" --sync-at-end -i "$work/A.enc" -o "$work/out"
run "A aws-encryption-cli encrypt" "$files_a" "$bytes_a" "${aec[@]}" --encrypt -i "$work/A" -o "$work/out"
run "A aws-encryption-cli --caching" "$files_a" "$bytes_a" "${aec[@]}" --encrypt \
    --caching capacity=10 max_age=600 max_messages_encrypted=100000 -i "$work/A" -o "$work/out"

# Tree B.
run "B cp -r --reflink=never + sync" "$files_b" "$bytes_b" sh -c 'cp -r --reflink=never "$1/." "$2" && sync' sh "$work/B" "$work/out"
run "B encrypt -r (fsync per file)" "$files_b" "$bytes_b" "$bin" encrypt -r "${k[@]}" -i "$work/B" -o "$work/out"
run "B encrypt -r --sync-at-end" "$files_b" "$bytes_b" "$bin" encrypt -r "${k[@]}" --sync-at-end -i "$work/B" -o "$work/out"
"$bin" encrypt -r "${k[@]}" --sync-at-end -i "$work/B" -o "$work/B.enc"
run "B decrypt -r (fsync per file)" "$files_b" "$bytes_b" "$bin" decrypt -r "${k[@]}" -i "$work/B.enc" -o "$work/out"
run "B aws-encryption-cli encrypt" "$files_b" "$bytes_b" "${aec[@]}" --encrypt -i "$work/B" -o "$work/out"

# Interop, both ways, on a small tree.
mkdir -p "$work/I/sub" "$work/I.aec" "$work/I.back" "$work/I.aec2"
for i in 1 2 3; do head -c $((i * 5000)) /dev/urandom >"$work/I/sub/f$i"; done
"${aec[@]}" --encrypt -i "$work/I" -o "$work/I.aec"
"$bin" decrypt -r "${k[@]}" --suffix .encrypted -i "$work/I.aec" -o "$work/I.kms-back"
# The run's manifest is not a message: kept outside the tree aws-encryption-cli reads.
"$bin" encrypt -r "${k[@]}" --manifest "$work/I.manifest" -i "$work/I" -o "$work/I.kms"
"${aec[@]}" --decrypt -i "$work/I.kms" -o "$work/I.aec2"
for i in 1 2 3; do
    cmp "$work/I/sub/f$i" "$work/I.kms-back/sub/f$i"
    cmp "$work/I/sub/f$i" "$(find "$work/I.aec2" -name "f$i.kms*")"
done
interop="aws-encryption-cli -r -> decrypt -r, and encrypt -r -> aws-encryption-cli -r: identical"

echo "tree A: $files_a files of 4 KiB in 100 directories; tree B: $files_b files of $size_b MiB"
echo "jobs: $jobs; median of $runs run(s); $(nproc) cores; $(date -u +%F)"
echo "KMS endpoint ceiling (boto3 GenerateDataKey, $jobs threads): $ceiling calls/s"
printf '%-34s %8s %10s %9s %8s\n' what seconds files/s MB/s RSS_MiB
printf '%s\n' "${results[@]}"
echo "interop: $interop"
