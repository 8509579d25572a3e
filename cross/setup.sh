#!/usr/bin/env bash
# Installs what ARM cross builds and qemu tests need on a fresh Debian machine (run as root).
# Idempotent: says what it does and skips what is present.
set -euo pipefail

APT_PACKAGES=(
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user
)
RUST_TARGETS=(aarch64-unknown-linux-gnu aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

say() { printf 'setup: %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        say "apt $pkg: present"
    else
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    say "apt-get update"
    apt-get update -qq
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for target in "${RUST_TARGETS[@]}"; do
    if grep -qx "$target" <<<"$installed_targets"; then
        say "rustup target $target: present"
    else
        say "rustup target add $target"
        rustup target add "$target"
    fi
done

# arm-unknown-linux-musleabihf has no downloadable std here: it is built with -Zbuild-std.
if rustup component list --installed | grep -q '^rust-src'; then
    say "rustup component rust-src: present"
else
    say "rustup component add rust-src"
    rustup component add rust-src
fi

# zig's C compiler and linker for ARMv6 (cross/zig-cc-armv6).
if python3 -m ziglang version >/dev/null 2>&1; then
    say "ziglang $(python3 -m ziglang version): present"
else
    say "pip install ziglang"
    python3 -m pip install --quiet --root-user-action=ignore ziglang
fi
say "done"
