#!/usr/bin/env bash
# Everything the tests need on a fresh Debian machine: Prometheus, Alertmanager and
# promtool from Debian (the ops tests start them on loopback), and a virtual
# environment with CPU torch first, then the project with its test and lint extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v promtool >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned to the CPU build (a looser request can pull a multi-GB CUDA build)
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[test,lint]'
