"""Generated protobuf and gRPC stubs of proto/audit/v1 (tools/gen_protos.py)."""
