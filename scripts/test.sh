#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), then every test with every feature,
# `nonce-guard` included: the library, every test binary and the CLI the CLI tests run abort if
# an AES-GCM (key, IV) pair is sealed twice or sealed after being opened.
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
# The guard's own test is compiled only with the guard: its absence means the mode is off.
cargo test "${locked[@]}" --all-features --lib -- --list | grep the_guard_aborts_when >/dev/null \
    || { echo "the nonce-guard feature is not on in the test build" >&2; exit 1; }
# Without default features the tests still build without a warning (each gates itself on what it
# needs): linted, not run, because a run compiles every test binary a second time to repeat what
# runs above.
cargo clippy "${locked[@]}" --no-default-features --tests -- -D warnings
cargo test "${locked[@]}" --all-features -- --skip esdk_vector
# The vectors run last and uncaptured, so their per-adaptor lines and the "esdk vectors: N
# passed, M failed" line show. The full set is ESDK_VECTORS_DIR or ../shared/esdk-vectors; without
# it the run fails unless KMS_ENVELOPE_SKIP_VECTORS=1 (then only the curated subset runs).
cargo test "${locked[@]}" --all-features --test vectors -- --nocapture
