#!/usr/bin/env bash
# The main job in one command: the seed's flow against a local KMS (moto's server), then a
# 256 MiB file encrypted under the new key's alias, inspected, decrypted and checked.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import moto.server' 2>/dev/null; then
    echo "== installing moto[server] (a local KMS endpoint)"
    python3 -m pip install --quiet 'moto[server]'
fi
echo "== building kms-envelope"
cargo build --release --quiet --bin kms-envelope
bin="$PWD/target/release/kms-envelope"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -c 'import sys; from moto.server import main; main(["-H", "127.0.0.1", "-p", sys.argv[1]])' "$port" \
    >"$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() { kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null && break
    sleep 0.1
done

# A local KMS: static test credentials, one Region, the endpoint on loopback.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_KMS="http://127.0.0.1:$port"
account=123456789012
cd "$work"

step() { echo; echo "== $*"; }
step "kms-envelope key template (the seed's four-statement policy)"
"$bin" key template --account "$account" \
    --admin "arn:aws:iam::$account:user/key-admin" --user "arn:aws:iam::$account:user/app" >keypolicy.json
head -c 400 keypolicy.json; echo "..."

step "kms-envelope key lint keypolicy.json"
"$bin" key lint file://keypolicy.json

step "kms-envelope key create --policy file://keypolicy.json --tags TagKey=Name,TagValue=demo_KMS"
"$bin" key create --policy file://keypolicy.json --tags TagKey=Name,TagValue=demo_KMS \
    --description "kms-envelope demo key" >created.json
cat created.json
key_id=$(python3 -c 'import json; print(json.load(open("created.json"))["KeyMetadata"]["KeyId"])')

step "kms-envelope key create-alias --alias-name alias/demo_KMS --target-key-id $key_id"
"$bin" key create-alias --alias-name alias/demo_KMS --target-key-id "$key_id"

step "kms-envelope key list-aliases --key-id $key_id"
"$bin" key list-aliases --key-id "$key_id"

step "a 256 MiB sample file"
head -c $((256 << 20)) /dev/urandom >sample.bin
sum_in=$(sha256sum sample.bin | cut -d' ' -f1)
echo "sha256 $sum_in"

now() { date +%s.%N; }
mbps() { python3 -c 'import sys; print("%.0f MB/s" % (256*1048576/1e6/(float(sys.argv[2])-float(sys.argv[1]))))' "$1" "$2"; }

step "kms-envelope encrypt --key alias/demo_KMS -c purpose=demo -c volume=vol-0demo"
t0=$(now)
"$bin" encrypt -q -i sample.bin -o sample.bin.kms --key alias/demo_KMS -c purpose=demo -c volume=vol-0demo
t1=$(now)
echo "encrypted $(stat -c %s sample.bin.kms) bytes at $(mbps "$t0" "$t1")"

step "kms-envelope inspect -i sample.bin.kms"
"$bin" inspect -i sample.bin.kms

step "kms-envelope decrypt --key alias/demo_KMS -c purpose=demo"
t0=$(now)
"$bin" decrypt -q -i sample.bin.kms -o sample.out --key alias/demo_KMS -c purpose=demo
t1=$(now)
echo "decrypted at $(mbps "$t0" "$t1")"
sum_out=$(sha256sum sample.out | cut -d' ' -f1)
echo "sha256 $sum_out"
if [ "$sum_in" != "$sum_out" ]; then
    echo "FAILED: the decrypted file differs from the original" >&2
    exit 1
fi
echo
echo "OK: the round trip under alias/demo_KMS matches"
