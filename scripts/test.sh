#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), then every test with every feature.
# Installs what the tests need that a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python's `cryptography` runs the independent reference decrypter in the interop test;
# moto's server is the KMS endpoint of the integration tests.
if ! python3 -c 'import cryptography' 2>/dev/null; then
    python3 -m pip install --quiet cryptography
fi
if ! python3 -c 'import moto.server' 2>/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi

locked=()
[ -f Cargo.lock ] && locked=(--locked)

cargo fmt --all -- --check
cargo clippy "${locked[@]}" --all-targets --all-features -- -D warnings
cargo test "${locked[@]}" --all-features -- --skip esdk_vectors
# The vectors run last and uncaptured, so its "esdk vectors: N passed, M failed" line shows.
cargo test "${locked[@]}" --all-features --test vectors -- --nocapture
