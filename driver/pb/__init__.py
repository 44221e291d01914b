"""Generated protobuf modules (hack/gen-proto.sh from proto/); do not edit."""
