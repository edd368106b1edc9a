# The serving image: SageMaker hosting runs `docker run <image> serve` and sends traffic to
# port 8080; the model artifact is mounted at /opt/ml/model (or SM_MODEL_DIR).
#
#   docker build -f docker/serve.Dockerfile -t mlinfra-serve .    # from the repository root
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# Inference runs on CPU: the CPU-only wheel keeps the image small (no CUDA runtime).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/mlinfra
COPY pyproject.toml README.md ./
COPY components ./components
COPY workloads ./workloads
RUN pip install . \
    && mkdir -p /opt/ml/model \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp mlinfra

WORKDIR /opt/ml
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080') + '/ping', timeout=2)"
CMD ["serve"]
