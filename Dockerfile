# `kiln serve` in a container, over a model repository mounted at /models (NAME/VERSION/model.so).
#   docker build -t kiln-serve .
#   docker run -p 8000:8000 -v $PWD/repo:/models:ro kiln-serve
# Compile the artifacts for the CPU the container will run on (e.g. --target x86-avx512, or host for any x86-64).
FROM python:3.11-slim

WORKDIR /opt/kiln
COPY pyproject.toml README.md ./
COPY compiler compiler
COPY runtime runtime
COPY targets targets
RUN pip install --no-cache-dir . && useradd --system --no-create-home kiln

USER kiln
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2)"
# SIGTERM (docker stop, Kubernetes) finishes the requests in flight before exiting.
ENTRYPOINT ["kiln", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/models"]
