#!/usr/bin/env bash
# Runs perch's tests for an ARM target under qemu-user.
#
#   cross/test.sh TARGET
#
# aarch64-unknown-linux-gnu, aarch64-unknown-linux-musl, armv7-unknown-linux-gnueabihf: the
# crate's tests (`cargo test --target T --no-default-features --features device,onnx`), run
# through the qemu runner in cross/cargo-config.toml, then the device binary on a sample model.
# arm-unknown-linux-musleabihf (ARMv6): the binary cross/build.sh made (built if missing) under
# `qemu-arm -cpu arm1176`, so that any ARMv7 instruction fails.
# Honours CARGO_TARGET_DIR; SAMPLE_MODEL_DIR (default ../shared/corpus/models/sk_mlp_digits)
# holds model.onnx and input.csv.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: cross/test.sh TARGET}
features="device,onnx"
sample_dir=${SAMPLE_MODEL_DIR:-$root/../shared/corpus/models/sk_mlp_digits}

# qemu-user shows the guest the host's /proc/cpuinfo, so tract would pick its kernels from an
# x86 CPU description; force the paths a Pi takes (NEON on ARMv7, Cortex-A53 tuning on aarch64).
# Not on ARMv6: an ARM1176 has no NEON, and forcing it there is a SIGILL (measured).
export TRACT_CPU_AARCH64_KIND=a53
if [[ "$target" != arm-unknown-linux-musleabihf ]]; then
    export TRACT_CPU_ARM32_NEON=true
fi

case "$target" in
    aarch64-unknown-linux-gnu) qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    aarch64-unknown-linux-musl) qemu=(qemu-aarch64) ;;
    armv7-unknown-linux-gnueabihf) qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    arm-unknown-linux-musleabihf) qemu=(qemu-arm -cpu arm1176) ;;
    *) echo "test.sh: unsupported target $target" >&2; exit 2 ;;
esac

if [[ "$target" != arm-unknown-linux-musleabihf ]]; then
    echo "test.sh: cargo test --target $target --no-default-features --features $features"
    (cd "$root" && cargo test --config "$root/cross/cargo-config.toml" --target "$target" \
        --no-default-features --features "$features")
fi

bin="$root/dist/$target/perch"
if [[ ! -x "$bin" ]]; then
    "$root/cross/build.sh" "$target" --features "$features" --profile "${PROFILE:-compact}"
fi
echo "test.sh: ${qemu[*]} dist/$target/perch --version"
"${qemu[@]}" "$bin" --version
if "${qemu[@]}" "$bin" --help 2>/dev/null | grep -qE '^\s+run\b'; then
    echo "test.sh: ${qemu[*]} dist/$target/perch run on $sample_dir"
    "${qemu[@]}" "$bin" run "$sample_dir/model.onnx" "$sample_dir/input.csv" >/dev/null
else
    echo "test.sh: this perch has no 'run' command yet; checked that it starts"
fi
echo "test.sh: $target ok"
