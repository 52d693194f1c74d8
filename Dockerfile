# headbits images: one target per service, each carrying only what that service runs.
#
#   make image                                   every target, tagged headbits-<target>:<version>
#   buildah bud --target featurizer -t headbits-featurizer:0.1.0 .   (or docker build)
#
# collector, featurizer: Kafka, Avro and numpy, no TensorFlow. scorer: + TensorFlow and the TF
# Serving API (the in-process backend and the gRPC backend). trainer: + matplotlib (reports) and
# `headbits model` (promote / rollback). None carries the development tools (headbits.devtools)
# or the traffic generator (headbits.traffic): the wheel holds every package, the image removes
# what its service never imports, and tests/test_image.py checks that they are absent.
#
# Production pins the base by digest: --build-arg BASE_IMAGE=debian:bookworm-slim@sha256:<digest>.
ARG BASE_IMAGE=debian:bookworm-slim

# Python 3.11 from Debian (bookworm's python3), the CA bundle, and the non-root user.
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --gid 10001 headbits \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin headbits
ENV PATH=/opt/headbits/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The wheel, built once for every target. PIP_CERT (a CA bundle mounted for the build) is for
# networks that reach package indexes through an intercepting proxy; unset, pip's default applies.
FROM runtime AS build
ARG PIP_CERT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY pyproject.toml README.md /src/
COPY services /src/services
COPY scripts/image-venv.sh /usr/local/bin/image-venv
RUN python3 -m venv /opt/wheel-build \
    && /opt/wheel-build/bin/pip install --no-cache-dir --quiet "setuptools>=77" wheel \
    && /opt/wheel-build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --quiet \
        --wheel-dir /wheels /src

FROM build AS venv-collector
ARG PIP_CERT
RUN image-venv collector devtools traffic
FROM build AS venv-featurizer
ARG PIP_CERT
RUN image-venv featurizer devtools traffic
FROM build AS venv-scorer
ARG PIP_CERT
RUN image-venv scorer devtools traffic
FROM build AS venv-trainer
ARG PIP_CERT
RUN image-venv trainer devtools traffic

FROM runtime AS collector
COPY --from=venv-collector /opt/headbits /opt/headbits
USER 10001:10001
ENTRYPOINT ["headbits"]
CMD ["collector"]

FROM runtime AS featurizer
COPY --from=venv-featurizer /opt/headbits /opt/headbits
USER 10001:10001
ENTRYPOINT ["headbits"]
CMD ["featurizer"]

FROM runtime AS scorer
COPY --from=venv-scorer /opt/headbits /opt/headbits
USER 10001:10001
ENTRYPOINT ["headbits"]
CMD ["scorer"]

FROM runtime AS trainer
COPY --from=venv-trainer /opt/headbits /opt/headbits
USER 10001:10001
ENTRYPOINT ["headbits"]
CMD ["trainer"]
