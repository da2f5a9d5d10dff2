# codegpt: the pipeline's stages in a CUDA 12.8 container.
#
#   docker build -t codegpt .                  (or: make image)
#   docker run --rm --gpus all codegpt plan    (ENTRYPOINT is `python -m pipeline`)
#
# Base: nvidia/cuda's `base` flavour, the smallest CUDA 12.8 image (CUDA runtime
# and the driver-compatibility settings only). The PyTorch wheel brings its own
# CUDA 12.8 libraries (cuBLAS, cuDNN, NCCL, nvrtc as nvidia-*-cu12 wheels), so the
# `runtime`/`cudnn` flavours would only add a second copy of them (~3 GB). What the
# base still gives over plain ubuntu:24.04: NVIDIA_VISIBLE_DEVICES and
# NVIDIA_DRIVER_CAPABILITIES for the container toolkit, and NVIDIA_REQUIRE_CUDA,
# which makes a host driver too old for CUDA 12.8 fail at `docker run`, clearly,
# instead of at the first CUDA call.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------- build: the venv
FROM ${CUDA_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Ubuntu's own python3 (3.12 on 24.04); versions come from the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
# torch 2.10.0 on PyPI is a CUDA 12.8 build for Linux x86_64 (it depends on
# nvidia-cuda-runtime-cu12 12.8.*); installed first and alone so that this layer,
# the largest, survives changes to everything else.
ARG TORCH_VERSION=2.10.0
RUN pip install "torch==${TORCH_VERSION}"
# The project's dependencies, read from pyproject.toml (the project itself is not
# installed: it runs from /app). torch is already there and satisfies torch>=2.4.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# GPT-2's vocabulary, fetched now and checked against its sha256, and p50k's made
# from it (checked against tiktoken's hash), so that the container needs no network
# at run time.
COPY model/__init__.py model/errors.py model/atomic.py model/tokenizer.py /src/model/
WORKDIR /src
RUN python -m model.tokenizer fetch && python -m model.tokenizer check

# ---------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# gcc, libc6-dev and python3-dev: torch.compile's Triton builds a small C launcher
# per kernel at run time (against Python.h) and fails without a C compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pipeline/ pipeline/
COPY model/ model/
COPY configs/ configs/
COPY --from=build /src/model/assets/gpt2.tiktoken /src/model/assets/p50k_base.tiktoken model/assets/
# data/ and out/ are bind mounts in normal use; world-writable (sticky, like /tmp)
# so that any --user can also run without them.
RUN mkdir -p data out && chmod 1777 data out
# HOME=/tmp: `--user $(id -u)` may name a user the image does not know.
# Compile caches under out/ survive restarts, so a resumed run does not recompile.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/app/out/.cache/inductor \
    TRITON_CACHE_DIR=/app/out/.cache/triton
# Ubuntu 24.04 images already have `ubuntu` with UID/GID 1000, the usual first
# user of a host; it (1000:1000) runs the stages unless --user says otherwise.
USER 1000:1000
ENTRYPOINT ["python", "-m", "pipeline"]
CMD ["--help"]
