# The training image: SageMaker runs `docker run <image> train`; a Kubernetes Job runs
# `torchrun ... -m workloads.train` (see workloads/jobs/kubernetes_manifest.py). Both use the SageMaker contract.
#
#   docker build -f docker/train.Dockerfile -t mlinfra-train .    # from the repository root
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# torch alone first, so code changes do not re-download it. The Linux wheel from PyPI bundles
# the CUDA runtime (GPU nodes supply only the driver) and runs on CPU where there is no GPU.
RUN pip install torch==2.13.0

WORKDIR /opt/mlinfra
COPY pyproject.toml README.md ./
COPY components ./components
COPY workloads ./workloads
RUN pip install . \
    && mkdir -p /opt/ml/input/data /opt/ml/input/config /opt/ml/model /opt/ml/output/data \
       /opt/ml/checkpoints \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp mlinfra

# Root by default, as SageMaker expects; Kubernetes pods run it as uid 1000 (see workloads/jobs/kubernetes_manifest.py).
WORKDIR /opt/ml
CMD ["train"]
