#!/usr/bin/env bash
# Regenerate docker/requirements.lock: every runtime dependency of chronos-flows resolved by uv and
# pinned with its sha256 hashes (pip installs it with --require-hashes). Test-only extras are left
# out. torch and its CUDA/Triton packages are left out too: each image installs torch first from its
# own index (the CPU wheel index for Dockerfile.cpu/.serve, PyPI's CUDA build for Dockerfile.gpu),
# pinned to constraints.txt's version, then the lock with --no-deps.
#
#   pip install uv && docker/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
  nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
  nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx)
args=()
for p in "${exclude[@]}"; do args+=(--no-emit-package "$p"); done
uv pip compile pyproject.toml -c constraints.txt --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 "${args[@]}" --custom-compile-command "docker/lock.sh" \
  -o docker/requirements.lock "$@"
