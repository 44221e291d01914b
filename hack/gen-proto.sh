#!/usr/bin/env bash
# Generate the Python protobuf modules under driver/pb/ from proto/*.proto.
#
# Usage: hack/gen-proto.sh [OUT_DIR]   (default driver/pb; the drift test passes a temporary dir)
# Uses grpcio-tools from the project venv (`make proto` calls this). Only message modules and
# their .pyi type stubs are generated: the gRPC services are wired by hand in driver/kubeletplugin/
# with the exact method paths of the kubelet contract, so no *_pb2_grpc.py is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-driver/pb}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
rm -f "$OUT"/*_pb2.py "$OUT"/*_pb2.pyi
"$PY" -m grpc_tools.protoc -I proto --python_out="$OUT" --pyi_out="$OUT" proto/*.proto
# The generated modules have no cross-imports today; if one appears, make it package-relative.
for f in "$OUT"/*_pb2.py "$OUT"/*_pb2.pyi; do
  sed -i -E 's/^import ([a-z0-9_]+_pb2) as /from driver.pb import \1 as /' "$f"
done
# protoc's .pyi files use bare Mapping; let mypy --strict accept them as generated.
for f in "$OUT"/*_pb2.pyi; do
  sed -i '1i # mypy: disallow-any-generics=False' "$f"
done
if [ ! -f "$OUT/__init__.py" ]; then
  printf '"""Generated protobuf modules (hack/gen-proto.sh from proto/); do not edit."""\n' > "$OUT/__init__.py"
fi
echo "generated: $(cd "$OUT" && ls *_pb2.py | tr '\n' ' ')"
