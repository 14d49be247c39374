#!/usr/bin/env python3
"""Per-Linear weight amax and relative NVFP4 quantization error ||W - Q(W)|| / ||W||, computed with numpy from a
source BF16 model and a modelopt-layout NVFP4 checkpoint (modelopt's own output), independently of NVFP4Cluster's code.

    weight-quantization-error.py SOURCE_DIR MODELOPT_DIR > reference.json

Q(W) = E2M1(nibble) * E4M3(weight_scale) * weight_scale_2, nibble 2k in the low half of byte k (the spec's layout).
"""
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(directory):
    tensors = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            body = f.read()
        for key, info in header.items():
            if key == "__metadata__":
                continue
            start, end = info["data_offsets"]
            tensors[key] = (info["dtype"], info["shape"], body[start:end])
    return tensors


def as_float32(dtype, shape, raw):
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    raise ValueError(f"unsupported dtype {dtype}")


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def e4m3(codes):
    codes = codes.astype(np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = codes & 0x7
    normal = (1 + mantissa / 8.0) * np.power(2.0, exponent - 7)
    subnormal = (mantissa / 8.0) * 2.0 ** -6
    return sign * np.where(exponent == 0, subnormal, normal)


def main(source_dir, modelopt_dir):
    source = read_safetensors(source_dir)
    quantized = read_safetensors(modelopt_dir)
    result = {}
    for name, (dtype, shape, raw) in sorted(quantized.items()):
        if not name.endswith(".weight_scale_2"):
            continue
        module = name[: -len(".weight_scale_2")]
        w = as_float32(*source[module + ".weight"]).astype(np.float64)
        rows, cols = w.shape
        packed = np.frombuffer(quantized[module + ".weight"][2], dtype=np.uint8).reshape(rows, cols // 2)
        nibbles = np.empty((rows, cols), dtype=np.uint8)
        nibbles[:, 0::2] = packed & 0xF
        nibbles[:, 1::2] = packed >> 4
        scales = e4m3(np.frombuffer(quantized[module + ".weight_scale"][2], dtype=np.uint8).reshape(rows, cols // 16))
        s2 = float(np.frombuffer(raw, dtype="<f4")[0])
        q = E2M1[nibbles] * np.repeat(scales, 16, axis=1) * s2
        result[module] = {
            "weight_amax": float(np.abs(w).max()),
            "weight_relative_error": float(np.linalg.norm(w - q) / np.linalg.norm(w)),
        }
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
