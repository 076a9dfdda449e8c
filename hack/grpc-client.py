#!/usr/bin/env python3
"""A second, independent client of the machine API: Python grpcio with stubs generated from
api/proto by grpcio-tools. Calls Version with an admin certificate (must succeed) and Reset with
a reader certificate (must be denied, naming the role it needs). Exit 0 when both hold.

usage: grpc-client.py --endpoint HOST:PORT --admin OSCONFIG --reader OSCONFIG
"""
import argparse
import os
import sys
import tempfile

import grpc
import yaml
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stubs(out):
    proto_dir = os.path.join(ROOT, "api", "proto")
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
        "basalt/machine/v1/machine.proto",
    ])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed ({rc})")
    sys.path.insert(0, out)
    from basalt.machine.v1 import machine_pb2, machine_pb2_grpc
    return machine_pb2, machine_pb2_grpc


def channel(endpoint, osconfig):
    with open(osconfig) as f:
        cfg = yaml.safe_load(f)
    ctx = cfg["contexts"][cfg["context"]]
    creds = grpc.ssl_channel_credentials(
        root_certificates=ctx["ca"].encode(),
        private_key=ctx["key"].encode(),
        certificate_chain=ctx["crt"].encode(),
    )
    return grpc.secure_channel(endpoint, creds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--reader", required=True)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(out)
        admin = rpc.MachineStub(channel(a.endpoint, a.admin))
        v = admin.Version(pb.VersionRequest(), timeout=30)
        print(f"admin: Version: mode={v.mode} hostname={v.hostname} kernel={v.kernel}")
        if v.mode != "running":
            sys.exit(f"expected a configured node, got mode {v.mode!r}")
        reader = rpc.MachineStub(channel(a.endpoint, a.reader))
        try:
            reader.Reset(pb.ResetRequest(graceful=True), timeout=30)
        except grpc.RpcError as e:
            print(f"reader: Reset: {e.code().name}: {e.details()}")
            if e.code() != grpc.StatusCode.PERMISSION_DENIED or "needs role os:admin" not in e.details():
                sys.exit("expected PERMISSION_DENIED naming os:admin")
        else:
            sys.exit("a reader was allowed to reset the node")
        # The reader can read.
        r = reader.ServiceList(pb.ServiceListRequest(), timeout=30)
        print(f"reader: ServiceList: {', '.join(s.id for s in r.services)}")
    print("ok")


if __name__ == "__main__":
    main()
