# Build: docker build -t dropship .
# Run:   docker run -p 8080:8080 -v /etc/dropship:/etc/dropship -v dropship-data:/var/lib/dropship \
#          dropship serve --config /etc/dropship/dropship.toml
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
RUN cargo build --release --locked --bin dropship

FROM debian:bookworm-slim
# openssh-client: Dropship drives the system ssh; coreutils' timeout is used by local steps.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/dropship --create-home dropship
COPY --from=build /src/target/release/dropship /usr/local/bin/dropship
USER dropship
WORKDIR /var/lib/dropship
ENV DROPSHIP__SERVER__LISTEN=0.0.0.0:8080 \
    DROPSHIP__SERVER__DATA_DIR=/var/lib/dropship
EXPOSE 8080
ENTRYPOINT ["dropship"]
CMD ["serve"]
