#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 60), seeded from the public ESDK vectors and
# from messages written under the fuzz key. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(header decrypt_stream inspect)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
vectors=${ESDK_VECTORS_DIR:-../shared/esdk-vectors}
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "$vectors" ] && [ -z "$(ls -A "$corpus")" ]; then
        # A sample of the public vectors (the decrypt target takes one leading control byte).
        find "$vectors" -path '*ciphertexts/*' -type f | sort | awk 'NR % 8 == 1' | head -200 |
            while read -r f; do
                if [ "$t" = decrypt_stream ]; then
                    { printf '\x07'; cat "$f"; } >"$corpus/$(basename "$f")"
                else
                    cp "$f" "$corpus/"
                fi
            done
    fi
    echo "== fuzz $t for ${seconds}s"
    cargo fuzz run "$t" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
        grep -E "^#[0-9]+.*(DONE|pulse)|Done [0-9]+ runs|ERROR|panicked|SUMMARY" | tail -3
done
