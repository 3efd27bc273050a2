#!/usr/bin/env bash
# Volumes over NBD against the unencrypted baseline, in one run: `kms-envelope volume serve`
# serving an encrypted volume, and `qemu-nbd` serving the same raw image unencrypted.
#
#   scripts/volume-bench.sh [SIZE_MIB] [RUNS]     (default 1024 and 3)
#
# Both servers are measured with the same clients, alternately, RUNS times each:
#   convert-in   qemu-img convert -n -f raw -O raw disk.img nbd+unix://...  (ends with a flush)
#   convert-out  qemu-img convert -f raw -O raw nbd+unix://... out.img
#   random-mix   qemu-io: batches of 32 aio_write + 32 aio_read of 4 KiB at random aligned
#                offsets, each batch ended by aio_flush (durable), BATCHES batches
# and prints the medians and the ratios ours/baseline (time ratio baseline/ours, so 1.0 = as
# fast, > 1 faster). The baseline's flags are pinned: qemu-nbd -f raw --cache=writeback (its
# default) --discard=ignore (its default: no discard) --aio=threads (its default), persistent.
# The volume is keyed with a raw AES key: the key is unwrapped once at open, so KMS plays no
# part in these figures. Needs qemu-img, qemu-io, qemu-nbd, python3; builds the release binary.
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${2:-3}
BATCHES=${BATCHES:-200}
cd "$(dirname "$0")/.."

for tool in qemu-img qemu-io qemu-nbd python3; do
  command -v "$tool" >/dev/null || { echo "volume-bench: $tool is missing" >&2; exit 2; }
done

# Default features, as users build it: --all-features would add `nonce-guard`, the test-only
# mode that records every (key, nonce) pair sealed.
cargo build --release --bin kms-envelope >&2
BIN=$PWD/target/release/kms-envelope

WORK=$(mktemp -d "${TMPDIR:-/tmp}/volume-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The image: 1 MiB stripes, two of random data then one of zeros (a hole), repeating.
python3 - "$WORK/disk.img" "$SIZE_MIB" <<'EOF'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(mib):
        if i % 3 != 2:
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
EOF
SIZE=$((SIZE_MIB << 20))

# The random mix: the same offsets for both servers.
python3 - "$WORK/mix.txt" "$SIZE" "$BATCHES" <<'EOF'
import random, sys
path, size, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(12)
blocks = size // 4096
with open(path, "w") as f:
    for _ in range(batches):
        for _ in range(32):
            f.write(f"aio_write -P 0x5a {rng.randrange(blocks) * 4096} 4k\n")
        for _ in range(32):
            f.write(f"aio_read {rng.randrange(blocks) * 4096} 4k\n")
        f.write("aio_flush\n")
EOF
OPS=$((BATCHES * 64))

head -c 32 /dev/urandom > "$WORK/raw.key"
KEY="bench:volume:$WORK/raw.key"
"$BIN" -q volume create -o "$WORK/vol" --size "$SIZE" --raw-aes-key "$KEY" >&2
cp --sparse=always "$WORK/disk.img" "$WORK/base.img"

OURS=$WORK/ours.sock
BASE=$WORK/base.sock
"$BIN" -q volume serve -i "$WORK/vol" --socket "$OURS" --raw-aes-key "$KEY" >&2 &
PIDS+=($!)
qemu-nbd -f raw --cache=writeback --discard=ignore --aio=threads --persistent \
  --socket="$BASE" "$WORK/base.img" >&2 &
PIDS+=($!)
for s in "$OURS" "$BASE"; do
  for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
  [ -S "$s" ] || { echo "volume-bench: no server at $s" >&2; exit 1; }
done
url() { echo "nbd+unix:///?socket=$1"; }

# Seconds that "$@" takes.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

declare -A T
for run in $(seq "$RUNS"); do
  for who in ours base; do
    sock=$OURS; [ "$who" = base ] && sock=$BASE
    T[$who-in]+="$(timed qemu-img convert -n -f raw -O raw "$WORK/disk.img" "$(url "$sock")") "
    rm -f "$WORK/out.img"
    T[$who-out]+="$(timed qemu-img convert -f raw -O raw "$(url "$sock")" "$WORK/out.img") "
    qemu-img compare -q -f raw -F raw "$WORK/disk.img" "$WORK/out.img" \
      || { echo "volume-bench: $who: the image read back differs" >&2; exit 1; }
    rm -f "$WORK/out.img"
    T[$who-mix]+="$(timed qemu-io -f raw "$(url "$sock")" < "$WORK/mix.txt") "
  done
done

python3 - "$SIZE" "$OPS" "$RUNS" "${T[ours-in]}" "${T[base-in]}" "${T[ours-out]}" \
  "${T[base-out]}" "${T[ours-mix]}" "${T[base-mix]}" <<'EOF'
import statistics, sys
size, ops, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t = [list(map(float, a.split())) for a in sys.argv[4:]]
names = ["convert-in", "convert-out", "random-mix"]
print(f"volume-bench: {size >> 20} MiB image, {runs} runs each, medians (all runs in seconds)")
for i, name in enumerate(names):
    ours, base = statistics.median(t[2 * i]), statistics.median(t[2 * i + 1])
    if name == "random-mix":
        unit = lambda s: f"{ops / s:8.0f} IOPS"
    else:
        unit = lambda s: f"{size / s / 1e6:8.0f} MB/s"
    print(f"{name:12} ours {ours:7.3f} s {unit(ours)} | qemu-nbd {base:7.3f} s {unit(base)} | "
          f"ratio {base / ours:.2f}  (ours {t[2 * i]}, qemu-nbd {t[2 * i + 1]})")
EOF
