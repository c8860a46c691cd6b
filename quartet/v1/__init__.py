"""Generated protobuf and gRPC stubs of the quartet.v1 contracts (see proto/)."""
