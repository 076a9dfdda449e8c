"""Checks docs/schema/config.schema.json the way an editor uses it: every valid testdata
document passes, and documents with unknown fields or wrong types fail."""
import glob
import json
import sys

import jsonschema
import yaml

schema = json.load(open("docs/schema/config.schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
bad = 0
n = 0
for f in sorted(glob.glob("config/testdata/valid/*.yaml")) + ["config/testdata/common/secrets.yaml"]:
    for doc in yaml.safe_load_all(open(f)):
        if doc is None:
            continue
        n += 1
        for e in v.iter_errors(doc):
            bad += 1
            print(f"{f}: {doc.get('kind')}: {e.message}")
wrong = [
    {"apiVersion": "v1alpha1", "kind": "LinkConfig", "name": "eth0", "mtu": "1500"},
    {"apiVersion": "v1alpha1", "kind": "LinkConfig", "name": "eth0", "bogus": 1},
    {"apiVersion": "v1alpha1", "kind": "MachineConfig", "type": "boss"},
    {"apiVersion": "v1alpha1", "kind": "ClusterConfig", "name": "x"},
    {"apiVersion": "v1alpha1", "kind": "Nope"},
]
for doc in wrong:
    if v.is_valid(doc):
        bad += 1
        print(f"schema accepts an invalid document: {doc}")
print(f"schema: {n} valid documents accepted, {len(wrong)} invalid ones rejected" if not bad else "")
sys.exit(1 if bad else 0)
