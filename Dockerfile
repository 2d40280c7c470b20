# rim_agents: RIM policies for sb3-contrib's RecurrentPPO. The default command runs the main
# job (train a RIM agent on POPGym's RepeatFirst and the memoryless control, then evaluate
# both and a random policy there and on the 8x longer RepeatFirstMedium).
#   docker build -t rim_agents .
#   docker run --rm -v "$PWD/logs:/app/logs" rim_agents            # main job, results in ./logs
#   docker run --rm rim_agents make test                           # the test suite
# CUDA: the pinned torch is the CPU build. For a GPU image, start from an image with the CUDA
# runtime (or keep this one and run with --gpus all) and install torch from PyTorch's CUDA
# index before the package, e.g. replace the torch line below with
#   .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# (pick the CUDA tag that matches the host driver: https://pytorch.org/get-started/locally/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg
RUN apt-get update \
    && apt-get install -y --no-install-recommends make g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# Same steps as `make install`, into the image's .venv: CPU torch first, then the pinned versions.
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --upgrade pip \
    && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && .venv/bin/pip install --no-cache-dir -c requirements/constraints.txt -e '.[dev,sweep]' \
    && touch .venv/.installed
# Build the native RIM op now (g++ above, ninja from pip), so containers start with it.
RUN .venv/bin/python -c "from rim_agents.nn import native; r = native.unavailable_reason(); assert r is None, r"

CMD ["make", "main"]
