#!/usr/bin/env bash
# device-build.sh [CARRY_DIR] — builds coordctl, coordd, workerd and CUDABenchmarks as static-stdlib release binaries and packs them, with
# their resource bundles, the BLAS libraries they link and the device scripts, into CARRY_DIR/nvfp4-device.tar.xz
# (coordctl, CUDABenchmarks) and CARRY_DIR/nvfp4-daemons.tar.xz (coordd, workerd; each archive under 64 MiB, the
# device tool's limit per call; unpack both into the same directory)
# (default: <package root>/.devcarry, which should be git-ignored). Carry CARRY_DIR to a GPU machine that has no Swift,
# unpack and run Scripts/device-run.sh there (Docs/operations.md, "Running on a GPU machine").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry=${1:-"$root/.devcarry"}
cd "$root"
for product in coordctl coordd workerd CUDABenchmarks; do
    swift build -c release --static-swift-stdlib --product "$product"
done
bin=$(swift build -c release --show-bin-path)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/nvfp4/bin" "$stage/nvfp4/lib" "$stage/nvfp4/scripts"
cp "$bin/coordctl" "$bin/coordd" "$bin/workerd" "$bin/CUDABenchmarks" "$stage/nvfp4/bin/"
command -v strip >/dev/null && strip "$stage"/nvfp4/bin/coordctl "$stage"/nvfp4/bin/coordd "$stage"/nvfp4/bin/workerd "$stage"/nvfp4/bin/CUDABenchmarks
# Bundle.module looks for <package>_<target>.resources next to the executable.
for bundle in "$bin"/NVFP4Cluster_*.resources; do cp -R "$bundle" "$stage/nvfp4/bin/"; done
# Shared libraries outside glibc and the CUDA driver (OpenBLAS and its Fortran runtime), resolved through symlinks.
for library in $(ldd "$bin/coordctl" "$bin/coordd" "$bin/workerd" "$bin/CUDABenchmarks" | awk '/=> \//{print $3}' | sort -u); do
    case "$(basename "$library")" in
        libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libgcc_s.so*|libstdc++.so*|libutil.so*) ;;
        *) cp -L "$library" "$stage/nvfp4/lib/";;
    esac
done
for library in "$stage"/nvfp4/lib/*; do
    for dependency in $(ldd "$library" | awk '/=> \//{print $3}'); do
        case "$(basename "$dependency")" in libgfortran.so*|libquadmath.so*) cp -L "$dependency" "$stage/nvfp4/lib/";; esac
    done
done
cp Scripts/device-run.sh Scripts/reference/cuda_layer_bench_torch.py Scripts/reference/compare_cuda_cpu_outputs.py \
    Scripts/reference/cuda_cpu_torch_amax.py \
    Scripts/gguf_to_hf.py "$stage/nvfp4/scripts/"
mkdir -p "$carry"
tar -C "$stage" -I "xz -T2" -cf "$carry/nvfp4-daemons.tar.xz" nvfp4/bin/coordd nvfp4/bin/workerd
tar -C "$stage" -I "xz -T2" -cf "$carry/nvfp4-device.tar.xz" --exclude nvfp4/bin/coordd --exclude nvfp4/bin/workerd nvfp4
ls -la "$carry"
