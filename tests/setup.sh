#!/usr/bin/env bash
# Installs what `cargo test --all-features` needs beyond a Rust toolchain on a fresh Debian
# machine: Debian's Chromium, which the dashboard test drives headless (tests/it/demo.rs).
# (The ONNX export test makes its own Python virtual environment with onnxruntime.)
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

say() { printf 'tests/setup: %s\n' "$*"; }

if command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; then
    say "chromium: present"
    exit 0
fi
as_root=()
if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        say "chromium is missing and this is not root: run 'apt-get install chromium' as root" >&2
        exit 1
    fi
fi
say "apt-get install chromium"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
say "chromium: $(chromium --version 2>/dev/null || echo installed)"
