# fabric's image: Ray's own image (Ray 2.60.0, Python 3.11) plus this checkout, installed with its runtime extras
# at the versions the tests passed with (docker/constraints.txt). One file, two variants; docker/build.sh builds
# both with the names that k8s/, cluster.yaml and fabric.k8s use:
#   CPU: docker build -t ghcr.io/archetype/fabric:0.1.0 .
#   GPU: docker build -t ghcr.io/archetype/fabric:0.1.0-gpu \
#          --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu --build-arg TORCH_INDEX=https://pypi.org/simple .
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# torch comes first and from its own index: the CPU image takes PyTorch's CPU wheel (PyPI's pulls gigabytes of
# CUDA libraries it cannot use); the GPU image takes PyPI's CUDA build. Both are the release constraints.txt pins.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=serve,train,mlflow,observe,k8s,postgres,schedule

WORKDIR /home/ray/fabric
COPY --chown=ray:users docker/constraints.txt docker/constraints.txt
RUN python -m pip install --no-cache-dir -c docker/constraints.txt torch \
        --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple

# The rest of the checkout; .dockerignore leaves out the venv, git, caches and the tests.
COPY --chown=ray:users . .
RUN python -m pip install --no-cache-dir -c docker/constraints.txt ".[${EXTRAS}]" \
    && python -c "import ray, torch, fabric, fabric.k8s_validate, serve.gateway, jobs.run_dag; \
assert ray.__version__ == '2.60.0', ray.__version__; print('fabric image ok: ray', ray.__version__, 'torch', torch.__version__)"

# Ray's image runs as the user `ray`; KubeRay and `ray up` start Ray themselves, so no ENTRYPOINT or CMD here.
