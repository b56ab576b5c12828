# tradehook in a container: a slim Debian image, the hub as a non-root user, its data in a
# volume.
#
#   docker build -t tradehook .
#   docker run -d --name tradehook -p 8787:8787 -v tradehook-data:/data tradehook
#   docker logs tradehook          # the admin token, printed once on the first start
#
# With your own config file (from `tradehook init`):
#   docker run -d -p 443:8443 -v tradehook-data:/data \
#     -v /etc/tradehook/tradehook.toml:/etc/tradehook/tradehook.toml:ro \
#     tradehook serve --config /etc/tradehook/tradehook.toml --listen 0.0.0.0:8443

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/tradehook

FROM debian:bookworm-slim
# Outbound HTTPS (Discord, Telegram, exchanges) checks certificates against the system's
# authorities.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tradehook \
    && install -d -o tradehook -g tradehook -m 0750 /data
COPY --from=build /src/target/release/tradehook /usr/local/bin/tradehook
USER tradehook
WORKDIR /data
VOLUME ["/data"]
ENV TRADEHOOK_LISTEN=0.0.0.0:8787 \
    TRADEHOOK_DATABASE=sqlite:///data/tradehook.db \
    TRADEHOOK_LOG_FORMAT=json
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=3s CMD ["tradehook", "doctor", "--url", "http://127.0.0.1:8787"]
ENTRYPOINT ["tradehook"]
CMD ["serve"]
