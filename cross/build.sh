#!/usr/bin/env bash
# Builds a stripped device binary for an ARM target into dist/<target>/perch.
#
#   cross/build.sh TARGET [--native-only] [--small-std | --prebuilt-std] [--features F]
#                  [--profile P] [--bin B] [--example E] [-- CARGO_ARGS...]
#
# TARGET: aarch64-unknown-linux-gnu, aarch64-unknown-linux-musl (static),
#         armv7-unknown-linux-gnueabihf, arm-unknown-linux-musleabihf (ARMv6, static).
# Defaults: --bin perch, --features device,onnx, --profile compact. --native-only builds
# the device binary without ONNX (--features device), with --small-std. --small-std
# rebuilds std for size (-Zbuild-std, std's optimize_for_size, no backtrace symbolizer;
# panics keep their message but not their file and line: -Zlocation-detail=none; no unwind
# tables, which nothing reads with panic=abort and no symbolizer: -Cforce-unwind-tables=no),
# on the stable toolchain in bootstrap mode with rust-src: about 330 KB less. Arguments after --
# go to cargo, e.g. --config 'profile.compact.opt-level="z"'.
# Honours CARGO_TARGET_DIR (default target/); build-std builds (ARMv6) use a subdirectory of
# it, since sharing one directory with ordinary builds made each rebuild everything.
set -euo pipefail

usage() { sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
target=""
features="device,onnx"
profile="compact"
kind="bin"
name="perch"
extra=()
while (($#)); do
    case "$1" in
        --native-only) features="device"; small_std=${small_std:-yes} ;;
        --small-std) small_std=yes ;;
        --prebuilt-std) small_std=no ;;
        --features) features="$2"; shift ;;
        --profile) profile="$2"; shift ;;
        --bin) kind="bin"; name="$2"; shift ;;
        --example) kind="example"; name="$2"; shift ;;
        -h|--help) usage ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "build.sh: unknown option $1" >&2; usage ;;
        *) [[ -z "$target" ]] || usage; target="$1" ;;
    esac
    shift
done
[[ -n "$target" ]] || usage

small_std=${small_std:-no}
base_dir=${CARGO_TARGET_DIR:-$root/target}
cargo_args=(build --config "$root/cross/cargo-config.toml" --target "$target"
    --profile "$profile" --no-default-features --features "$features" "--$kind" "$name" "${extra[@]}")
env_args=()
case "$target" in
    aarch64-unknown-linux-gnu|aarch64-unknown-linux-musl)
        strip_tool=aarch64-linux-gnu-strip ;;
    armv7-unknown-linux-gnueabihf)
        strip_tool=arm-linux-gnueabihf-strip ;;
    arm-unknown-linux-musleabihf)
        strip_tool=arm-linux-gnueabihf-strip
        base_dir="$base_dir/build-std"
        # rustup has no std for this target here; build it (stable toolchain, bootstrap mode).
        env_args=(RUSTC_BOOTSTRAP=1)
        cargo_args+=(-Zbuild-std=std,panic_abort) ;;
    *) echo "build.sh: unsupported target $target" >&2; usage ;;
esac
if [[ $small_std == yes ]]; then
    # A std built for size; its own directory, like every build-std build.
    [[ $target == arm-unknown-linux-musleabihf ]] || base_dir="$base_dir/build-std"
    base_dir="$base_dir/small"
    env_args=(RUSTC_BOOTSTRAP=1)
    kept=()
    for a in "${cargo_args[@]}"; do [[ $a == -Zbuild-std=* ]] || kept+=("$a"); done
    cargo_args=("${kept[@]}" -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size
        --config "target.$target.rustflags=['-Zlocation-detail=none', '-Cforce-unwind-tables=no']")
fi

echo "build.sh: cargo ${cargo_args[*]} (target dir $base_dir)"
(cd "$root" && env "${env_args[@]}" CARGO_TARGET_DIR="$base_dir" cargo "${cargo_args[@]}")

profile_dir=$profile
[[ "$profile" == dev ]] && profile_dir=debug
built="$base_dir/$target/$profile_dir/$name"
[[ "$kind" == example ]] && built="$base_dir/$target/$profile_dir/examples/$name"
out_dir="$root/dist/$target"
mkdir -p "$out_dir"
"$strip_tool" -o "$out_dir/$name" "$built"
size=$(stat -c %s "$out_dir/$name")
printf 'build.sh: dist/%s/%s %d bytes (%.2f MiB), features %s, profile %s\n' \
    "$target" "$name" "$size" "$(awk "BEGIN{print $size/1048576}")" "$features" "$profile"
