# websoft9-backup: the sidecar (docs/container.md).
#
#   docker build -t websoft9-backup .
#
# Without access to PyPI during the build (as in the tests here), build the wheels
# on a host that has it and hand them over:
#   pip wheel . -w .wheelhouse
#   docker build --build-arg WHEELHOUSE=.wheelhouse -t websoft9-backup .
ARG BASE_IMAGE=python:3.11-slim

# ---- build: the package and its dependencies in a venv (the sources and wheels stay here)
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
COPY . /src
RUN python3 -m venv /opt/websoft9-backup \
 && if [ -n "$WHEELHOUSE" ]; then \
        /opt/websoft9-backup/bin/pip install --no-cache-dir --no-index --find-links "/src/$WHEELHOUSE" websoft9-backup; \
    else \
        /opt/websoft9-backup/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/websoft9-backup/bin/pip uninstall -y -q setuptools pip

# ---- the image
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/websoft9-backup/bin:$PATH \
    BACKUP_DATA_DIR=/var/lib/websoft9-backup \
    BACKUP_API_LISTEN=0.0.0.0:8080
COPY --from=build /opt/websoft9-backup /opt/websoft9-backup
RUN groupadd --system --gid 10001 w9backup \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/websoft9-backup --no-create-home w9backup \
 && mkdir -p /var/lib/websoft9-backup /etc/websoft9-backup \
 && chown 10001:10001 /var/lib/websoft9-backup

# The catalog, the local repository (unless S3), the S3 metadata cache, job state.
VOLUME /var/lib/websoft9-backup
# Not root by default: add the Docker socket's group (group_add) so it can reach the engine;
# reading and restoring volume files with their owners needs root (user: "0"), see docs/container.md.
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('BACKUP_API_LISTEN', ':8080').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["websoft9-backup"]
CMD ["serve", "--init"]
