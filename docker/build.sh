#!/usr/bin/env bash
# Build fabric's two images from this checkout with the names k8s/, cluster.yaml and fabric.k8s use (needs docker).
#   docker/build.sh              # ghcr.io/archetype/fabric:<version> and :<version>-gpu
#   IMAGE=registry.example.com/fabric PUSH=1 docker/build.sh
# <version> is pyproject's; the Ray version is the one pyproject pins (ray==2.60.0).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-ghcr.io/archetype/fabric}"
RAY_VERSION=2.60.0
VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
docker build -t "$IMAGE:$VERSION" \
  --build-arg "BASE_IMAGE=rayproject/ray:$RAY_VERSION-py311" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
docker build -t "$IMAGE:$VERSION-gpu" \
  --build-arg "BASE_IMAGE=rayproject/ray:$RAY_VERSION-py311-gpu" --build-arg TORCH_INDEX=https://pypi.org/simple .
if [ "${PUSH:-0}" = 1 ]; then
  docker push "$IMAGE:$VERSION"
  docker push "$IMAGE:$VERSION-gpu"
fi
