#!/bin/bash
# sluice-healthcheck HOST:PORT PATH: exits 0 when GET PATH answers 200. Uses bash's /dev/tcp
# so the runtime image needs no HTTP client.
set -u
addr="${1:-127.0.0.1:8080}"
path="${2:-/healthz}"
host="${addr%:*}"
port="${addr##*:}"
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
read -r -t 3 status_line <&3 || exit 1
case "$status_line" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) exit 1 ;;
esac
