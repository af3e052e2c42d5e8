# syntax=docker/dockerfile:1
# Builds one Autonomous app into a small runtime image:
#   docker build --build-arg APP=OrderFlow -t registry.example.com/autonomous/orderflow:0.1.0 .
# The image's entrypoint is the app binary; its argument picks the role
# (ingress, worker, coordinator, all, dev, describe).

ARG SWIFT_IMAGE=swift:6.1-bookworm

FROM ${SWIFT_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnats-dev libssl-dev libcurl4-openssl-dev libsqlite3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so editing the app does not re-fetch packages.
COPY Package.swift ./
RUN swift package resolve
COPY Sources Sources
COPY Examples Examples
COPY Tests Tests
ARG APP=OrderFlow
RUN swift build -c release --product "${APP}" --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/${APP}" /out/app

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnats3.4 libssl3 libcurl4 libjemalloc2 ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc.so.2$')" /usr/local/lib/libjemalloc.so.2 \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/autonomous autonomous \
 && install -d -o 10001 -g 10001 /var/lib/autonomous
COPY --from=build /out/app /app/app
USER 10001:10001
WORKDIR /var/lib/autonomous
# jemalloc instead of glibc's malloc: the record hot path allocates per record, and glibc's
# malloc was its largest single cost (LoadTests, issue 6). Unset LD_PRELOAD to opt out.
ENV AUTONOMOUS_DATA_DIR=/var/lib/autonomous \
    AUTONOMOUS_HTTP_HOST=0.0.0.0 \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
EXPOSE 3000 8081
ENTRYPOINT ["/app/app"]
CMD ["--help"]
