#!/usr/bin/env bash
# System libraries Qt needs to run (offscreen in tests) and dpkg-deb for the .deb installer.
# Idempotent and quiet; skipped when not root or when apt-get is missing (e.g. macOS).
set -u
pkgs="libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0 dpkg"
command -v apt-get >/dev/null 2>&1 || exit 0
[ "$(id -u)" = 0 ] || { echo "not root: make sure these are installed: $pkgs"; exit 0; }
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq $missing >/dev/null
