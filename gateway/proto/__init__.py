"""Generated protobuf modules for OpAMP (package opamp.proto.v1). Regenerate with `make proto`."""
