# syntax=docker/dockerfile:1
# MTL pipeline image: Prefect worker + project code + torch + DeepSpeed.
# Build from the repo root (the context must contain pyproject.toml):
#   docker build -f infra/worker.Dockerfile -t mtl-pipeline:latest .
# GPU variant: pick the CUDA wheel index matching your driver, e.g.
#   --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/<cuda-tag>" \
#   --build-arg DS_ACCELERATOR=cuda
# (a CUDA build of DeepSpeed ops also needs a CUDA toolkit base image).
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ARG DEEPSPEED_VERSION=0.19.8
ARG DS_ACCELERATOR=cpu
# Needed by the Kubernetes work pool (infra/k8s); harmless for process pools.
ARG EXTRA_PIP_PACKAGES="prefect-kubernetes"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DS_ACCELERATOR=${DS_ACCELERATOR} \
    DS_BUILD_OPS=0

# Compiler for DeepSpeed's JIT-built ops (e.g. cpu_adam used by ZeRO offload),
# libaio for its async_io op.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libaio-dev \
 && rm -rf /var/lib/apt/lists/*

# 1) torch first, so DeepSpeed builds against it.
RUN pip install --upgrade pip setuptools wheel \
 && pip install ${TORCH_SPEC}

# 2) DeepSpeed without build isolation: its setup.py imports the torch above.
RUN pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
 && pip freeze | grep -iE '^(torch|deepspeed)==' > /tmp/pinned.txt

# 3) The project. Constrain torch/deepspeed so its dependency resolution cannot
#    swap the CPU torch wheel for a different build from PyPI.
WORKDIR /opt/mtl
COPY . /opt/mtl
RUN pip install -c /tmp/pinned.txt . \
 && if [ -n "${EXTRA_PIP_PACKAGES}" ]; then pip install -c /tmp/pinned.txt ${EXTRA_PIP_PACKAGES}; fi

# Non-root runtime user; /var/lib/mtl is the shared state dir (volume / PVC).
RUN useradd --create-home --uid 1000 mtl \
 && mkdir -p /var/lib/mtl \
 && chown -R mtl:mtl /var/lib/mtl /opt/mtl
USER mtl

ENTRYPOINT ["prefect", "worker", "start", "--pool", "mtl-cpu"]
CMD ["--type", "process"]
