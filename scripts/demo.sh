#!/usr/bin/env bash
# Runs the main job. Until the KMS demo lands, it round-trips a 64 MiB file under a raw AES key.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --example raw-file -- "$@"
