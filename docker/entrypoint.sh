#!/bin/sh
# Container entry point: run a `sysid` sub-command (default: a worker).
# `exec` replaces the shell so that `docker stop` sends SIGTERM straight to the worker, which then
# checkpoints its current training, releases the job and exits 0.
set -eu
if [ -z "${DJ_HOST:-}" ]; then
    echo "sysid-entrypoint: DJ_HOST is not set; set it (and DJ_USER, DJ_PASS) in .env" >&2
    exit 2
fi
exec sysid "$@"
