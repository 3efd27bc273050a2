#!/usr/bin/env python3
"""Curates tests/data/esdk-vectors/ from the full public ESDK vector set.

One vector per (expected result, suite, keyring kind, framing) among the offline-decryptable ones,
the smallest of each, copied with one merged manifest and keys file in the format
tests/support/vectors.rs reads, and a PROVENANCE.md naming each file's upstream origin.

    python3 scripts/curate-vectors.py [FULL_SET_DIR]   # default: ../shared/esdk-vectors

Deterministic: the same full set gives the same subset, byte for byte.
"""
import csv
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "esdk-vectors")
LIMIT = 2 * 1024 * 1024

# Manifest of each set (as in tests/vectors.rs) and where its files come from upstream
# (/work/shared/esdk-vectors/README.md, section 1).
SETS = {
    "legacy-python-1.3.0": (
        "manifest.json",
        "awslabs/aws-encryption-sdk-test-vectors",
        "58b283351eaeeb0b906d9dbeafe2a68e91df2414",
        "aws_encryption_sdk_resources/ciphertext/{suite}/small/{frame}/{uuid}",
    ),
    "net-4.0.1": (
        "offline-manifest.json",
        "aws/aws-encryption-sdk",
        "b5a2584c",
        "TestVectors/dafny/TestVectors/test/v4-Net-4.0.1.zip, member ciphertexts/{id}",
    ),
    "net-4.0.0-valid": (
        "offline-manifest.json",
        "aws/aws-encryption-sdk",
        "b5a2584c",
        "TestVectors/dafny/TestVectors/test/valid-Net-4.0.0.zip, member ciphertexts/{id}",
    ),
    "net-4.0.0-invalid": (
        "offline-negative-manifest.json",
        "aws/aws-encryption-sdk",
        "b5a2584c",
        "TestVectors/dafny/TestVectors/test/invalid-Net-4.0.0.zip, member ciphertexts/{id}",
    ),
    "dafny-4.1.0": (
        "offline-manifest.json",
        "aws/aws-encryption-sdk-c",
        "b353e973",
        "tests/TestVectors/from-dafny/ciphertexts/{id}",
    ),
}
PLAINTEXT_UPSTREAM = {
    "legacy-python-1.3.0": "aws_encryption_sdk_resources/plaintext/small",
    "net-4.0.1": "TestVectors/dafny/TestVectors/test/v4-Net-4.0.1.zip, member plaintexts/small",
    "net-4.0.0-valid": "TestVectors/dafny/TestVectors/test/valid-Net-4.0.0.zip, member plaintexts/small",
    "net-4.0.0-invalid": "TestVectors/dafny/TestVectors/test/invalid-Net-4.0.0.zip, member plaintexts/small",
    "dafny-4.1.0": "tests/TestVectors/from-dafny/plaintexts/small",
}


def kind(keyring):
    # "rsa-pkcs1-" (legacy) and "rsa-pkcs1-sha1" (.NET) name the same padding.
    return "rsa-pkcs1" if keyring.startswith("rsa-pkcs1") else keyring


def key_names(desc):
    """Every keys.json entry a key description refers to."""
    if desc is None:
        return []
    names = [desc["key"]] if "key" in desc else []
    names += key_names(desc.get("generator"))
    for child in desc.get("childKeyrings", []):
        names += key_names(child)
    names += key_names(desc.get("underlying"))
    return names


def rename_keys(desc, renamed):
    if desc is None:
        return None
    desc = dict(desc)
    if "key" in desc:
        desc["key"] = renamed.get(desc["key"], desc["key"])
    for field in ("generator", "underlying"):
        if desc.get(field) is not None:
            desc[field] = rename_keys(desc[field], renamed)
    if "childKeyrings" in desc:
        desc["childKeyrings"] = [rename_keys(c, renamed) for c in desc["childKeyrings"]]
    return desc


def main():
    full = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "esdk-vectors")
    full = os.path.abspath(full)
    with open(os.path.join(full, "INDEX.tsv"), newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["needs"] == "offline"]
    chosen = {}
    for r in sorted(rows, key=lambda r: (int(r["bytes"]), r["set"], r["id"])):
        chosen.setdefault((r["expect"], r["suite"], kind(r["keyring"]), r["content"]), r)

    # The licence text: the system's copy, else the one already in the subset.
    licence = None
    for path in ("/usr/share/common-licenses/Apache-2.0", os.path.join(OUT, "LICENSE-APACHE-2.0")):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                licence = f.read()
            break
    if licence is None:
        sys.exit("no copy of the Apache License 2.0 found to put beside the vectors")
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "plaintexts"))
    tests, keys, provenance, plaintexts = {}, {}, [], set()
    manifests, keysets = {}, {}
    for key in sorted(chosen):
        r = chosen[key]
        s = r["set"]
        manifest_name, repo, commit, pattern = SETS[s]
        if s not in manifests:
            with open(os.path.join(full, s, manifest_name)) as f:
                manifests[s] = json.load(f)
            with open(os.path.join(full, s, "keys.json")) as f:
                keysets[s] = json.load(f)["keys"]
        test = json.loads(json.dumps(manifests[s]["tests"][r["id"]]))
        # Keys of the same name in two sets may differ: a clash gets the set's prefix, and the
        # entry keeps its wrapping-key name in "key-id".
        renamed = {}
        scenario = test.get("decryption-scenario")
        descs = [scenario["decryptKeyDescription"]] if scenario else test["master-keys"]
        for name in sorted({n for d in descs for n in key_names(d)}):
            entry = dict(keysets[s][name])
            entry.setdefault("key-id", name)
            new = name
            if new in keys and keys[new] != entry:
                new = f"{s}/{name}"
            keys[new] = entry
            renamed[name] = new
        ct_rel = f"ciphertexts/{s}/{r['id']}"
        pt_rel = f"plaintexts/{s}"
        if scenario:
            scenario["decryptKeyDescription"] = rename_keys(scenario["decryptKeyDescription"], renamed)
            scenario["ciphertext"] = "file://" + ct_rel
            scenario["result"] = "file://" + pt_rel
        else:
            test["master-keys"] = [rename_keys(d, renamed) for d in test["master-keys"]]
            test["ciphertext"] = "file://" + ct_rel
            if "output" in test.get("result", {}):
                test["result"]["output"]["plaintext"] = "file://" + pt_rel
            test.pop("plaintext", None)
        tests[f"{s}/{r['id']}"] = test
        os.makedirs(os.path.join(OUT, "ciphertexts", s), exist_ok=True)
        shutil.copyfile(os.path.join(full, r["ciphertext"]), os.path.join(OUT, ct_rel))
        suite, frame, uuid = (r["id"].split("-", 2) + ["", ""])[:3]
        upstream = pattern.format(id=r["id"], suite=suite, frame=frame, uuid=uuid)
        provenance.append((ct_rel, repo, commit, upstream, key))
        if r["expect"] == "success" and s not in plaintexts:
            plaintexts.add(s)
            shutil.copyfile(os.path.join(full, s, "plaintexts", "small"), os.path.join(OUT, pt_rel))
            provenance.append((pt_rel, repo, commit, PLAINTEXT_UPSTREAM[s], None))

    manifest = {
        "manifest": {"type": "awses-decrypt", "version": 5},
        "client": {"name": "kms-envelope scripts/curate-vectors.py", "version": "1"},
        "keys": "file://keys.json",
        "tests": tests,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "keys.json"), "w") as f:
        json.dump({"manifest": {"type": "keys", "version": 3}, "keys": keys}, f, indent=2,
                  sort_keys=True, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "LICENSE-APACHE-2.0"), "wb") as f:
        f.write(licence)
    write_provenance(provenance, len(tests))

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    positive = sum(1 for k in chosen if k[0] == "success")
    print(f"{len(tests)} vectors ({positive} positive, {len(tests) - positive} negative), {total} bytes")
    if total > LIMIT:
        sys.exit(f"the subset is {total} bytes, over the {LIMIT}-byte limit")


def write_provenance(rows, count):
    lines = [
        "# Provenance of the curated ESDK test vectors",
        "",
        f"{count} vectors chosen by `scripts/curate-vectors.py` from the public AWS Encryption SDK",
        "test vectors (the full offline set is described in `../shared/esdk-vectors/README.md`):",
        "one per expected result x algorithm suite x keyring kind x framing, the smallest of each.",
        "",
        "## Licence",
        "",
        "The ciphertexts, plaintexts and keys come from the repositories named below, each",
        "published under the Apache License, Version 2.0; a copy is in `LICENSE-APACHE-2.0`.",
        "They are copied unchanged. `manifest.json` and `keys.json` are **derived works, changed",
        "by kms-envelope**: the upstream manifests and key files of several sets merged into one,",
        "file paths rewritten, the 2017 legacy manifest converted to the `awses-decrypt` format,",
        "and a key whose name clashes across sets renamed (its wrapping-key name kept in `key-id`).",
        "",
        "Notices of the upstream works:",
        "",
        "- aws/aws-encryption-sdk-c: \"AWS Encryption SDK C. Copyright 2018 Amazon.com, Inc. or its",
        "  affiliates. All Rights Reserved.\"",
        "- awslabs/aws-encryption-sdk-test-vectors and aws/aws-encryption-sdk: Copyright",
        "  Amazon.com, Inc. or its affiliates. All Rights Reserved. (no NOTICE file found in the",
        "  snapshots used)",
        "",
        "## Files",
        "",
        "Commits are those of the snapshots the full set was taken from (short where the",
        "snapshot named only a short hash).",
        "",
        "| file | upstream repository | commit | upstream path | chosen for (result, suite, keyring, framing) |",
        "|---|---|---|---|---|",
    ]
    for path, repo, commit, upstream, key in rows:
        why = ", ".join(key) if key else "expected plaintext"
        lines.append(f"| `{path}` | {repo} | `{commit}` | `{upstream}` | {why} |")
    with open(os.path.join(OUT, "PROVENANCE.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
