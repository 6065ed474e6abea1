# One image for the API and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DFG_HOST=0.0.0.0

WORKDIR /srv

# Layer 1: torch + torchvision (several GB, CUDA build). Changes only when the pins change.
RUN pip install torch==2.14.1 torchvision==0.29.1

# Layer 2: the other dependencies, resolved from pyproject.toml alone, so editing code does not
# reinstall them. Empty package stubs let pip build the metadata; the real code comes next.
COPY pyproject.toml README.md ./
RUN mkdir -p app core workers models deepfake_guard \
    && touch app/__init__.py core/__init__.py workers/__init__.py models/__init__.py deepfake_guard/__init__.py \
    && pip install . \
    && pip uninstall -y deepfake-guard \
    && rm -rf app core workers models deepfake_guard build ./*.egg-info

# Layer 3: the code and the demo detectors (models/demo_checkpoints, package data).
COPY app ./app
COPY core ./core
COPY workers ./workers
COPY models ./models
COPY deepfake_guard ./deepfake_guard
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin guard

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["deepfake-guard", "serve"]
