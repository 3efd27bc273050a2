#!/usr/bin/env bash
# The CLI on a 1 GiB file in the page cache, beside `cp` of the same file in the same run:
# MB/s (median of RUNS), the ratio to cp, and peak RSS (/usr/bin/time -v). A raw AES key keeps
# KMS out of the timing. The CLI fsyncs its output before linking it into place (that is what
# makes it durable), so each is measured twice: `cp` plain and followed by an fsync of the copy
# (`sync FILE`); the CLI by default and with --no-fsync. Like-for-like pairs: cp with
# --no-fsync, cp+fsync with the default. Every run starts after a `sync`, so that writeback
# left by the previous one does not land in its time.
# Usage: scripts/bench.sh [SIZE_MIB] [RUNS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-3}
threads=${3:-$(nproc)}

if [ ! -x /usr/bin/time ]; then
    apt-get install -y -qq time >/dev/null
fi
cargo build --release --quiet --bin kms-envelope
bin="$PWD/target/release/kms-envelope"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 32 /dev/urandom >"$work/key"
head -c $((size_mib << 20)) /dev/urandom >"$work/in"
cat "$work/in" >/dev/null

# run NAME CMD...: prints the median seconds and the largest peak RSS of RUNS runs.
run() {
    local name=$1; shift
    local times=() rss=0
    for _ in $(seq "$runs"); do
        rm -f "$work/out"
        sync
        /usr/bin/time -v -o "$work/tv" "$@" >/dev/null
        times+=("$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$work/tv")")
        r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/tv")
        [ "$r" -gt "$rss" ] && rss=$r
    done
    median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$name $median $rss"
}

key="bench:key:$work/key"
cp_line=$(run cp cp "$work/in" "$work/out")
cps_line=$(run cp+fsync sh -c 'cp "$1" "$2" && sync "$2"' sh "$work/in" "$work/out")
"$bin" encrypt -q --threads "$threads" --raw-aes-key "$key" -i "$work/in" -o "$work/sealed"
enc_line=$(run encrypt "$bin" encrypt -q --threads "$threads" --raw-aes-key "$key" -i "$work/in" -o "$work/out")
encn_line=$(run encrypt--no-fsync "$bin" encrypt -q --no-fsync --threads "$threads" --raw-aes-key "$key" -i "$work/in" -o "$work/out")
dec_line=$(run decrypt "$bin" decrypt -q --threads "$threads" --raw-aes-key "$key" -i "$work/sealed" -o "$work/out")
decn_line=$(run decrypt--no-fsync "$bin" decrypt -q --no-fsync --threads "$threads" --raw-aes-key "$key" -i "$work/sealed" -o "$work/out")
cmp -s "$work/in" "$work/out" || { echo "decrypted file differs" >&2; exit 1; }

cp_s=$(echo "$cp_line" | cut -d' ' -f2)
echo "file: ${size_mib} MiB in the page cache; threads: $threads; median of $runs runs"
printf '%-18s %8s %8s %12s %13s\n' what MB/s vs_cp vs_cp+fsync peak_RSS_MiB
cps_s=$(echo "$cps_line" | cut -d' ' -f2)
for line in "$cp_line" "$cps_line" "$enc_line" "$encn_line" "$dec_line" "$decn_line"; do
    set -- $line
    awk -v n="$1" -v s="$2" -v cp="$cp_s" -v cps="$cps_s" -v r="$3" -v mib="$size_mib" \
        'BEGIN { printf "%-18s %8.0f %8.2f %12.2f %13.1f\n", n, mib*1048576/1e6/s, cp/s, cps/s, r/1024 }'
done
