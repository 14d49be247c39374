#!/usr/bin/env python3
"""Each Linear's W4A4 output error on the calibration inputs, from a float32 transformers forward and a modelopt-layout
NVFP4 checkpoint (modelopt's own output), independently of NVFP4Cluster's code.

    linear-output-error.py SOURCE_DIR MODELOPT_DIR CALIB_JSONL [--token-limit 1024] > reference.json

X is each Linear's input in the original model's forward over the leading calibration samples (file order, one sample
per forward, cut at --token-limit tokens in all, the last sample shortened). The figure is
||X W^T - X~ Q(W)^T|| / ||X W^T|| (Frobenius, in float64), where
- W is the source weight (BF16 widened to float32);
- Q(W) = E2M1(nibble) * E4M3(weight_scale) * weight_scale_2 from the modelopt checkpoint's bytes;
- X~ is X as the NVFP4 GEMM sees it: per 16 inputs, s = max|x| / (6 * input_scale) (1 when 0), clamped to
  [2^-9, 448], rounded to E4M3; x~ = E2M1(x / (E4M3(s) * input_scale)) * E4M3(s) * input_scale
  (nvfp4-checkpoint-spec.md sections 1-4), with modelopt's input_scale.
Needs torch and transformers.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
# Upper bounds of each magnitude's interval and whether the bound itself belongs to it (ties to the even code).
E2M1_BOUNDS = [(0.25, True), (0.75, False), (1.25, True), (1.75, False), (2.5, True), (3.5, False), (5.0, True)]


def e2m1_round(y):
    """Round float32 values to the E2M1 grid (spec section 1), keeping the sign."""
    a = y.abs()
    index = torch.full_like(a, 7, dtype=torch.long)
    for position in reversed(range(7)):
        bound, inclusive = E2M1_BOUNDS[position]
        inside = a <= bound if inclusive else a < bound
        index = torch.where(inside, torch.full_like(index, position), index)
    magnitude = E2M1_VALUES.to(torch.float32)[index]
    return torch.where(y < 0, -magnitude, magnitude)


def e4m3(values):
    return values.clamp(2.0 ** -9, 448.0).to(torch.float8_e4m3fn).to(torch.float32)


def fake_quantize_input(x, input_scale):
    rows, columns = x.shape
    blocks = x.reshape(rows, columns // 16, 16)
    s = blocks.abs().amax(dim=-1, keepdim=True) / (6 * input_scale)
    s = torch.where(s == 0, torch.ones_like(s), s)
    scale = e4m3(s) * input_scale
    return (e2m1_round(blocks / scale) * scale).reshape(rows, columns)


def dequantize(packed, block_scales, scale2):
    low = (packed & 0x0F).long()
    high = (packed >> 4).long()
    codes = torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)
    magnitude = E2M1_VALUES.to(torch.float32)[codes & 7]
    values = torch.where(codes >= 8, -magnitude, magnitude)
    scales = block_scales.to(torch.float32).repeat_interleave(16, dim=1)
    return values * scales * scale2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("modelopt")
    parser.add_argument("calib")
    parser.add_argument("--token-limit", type=int, default=1024)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.source, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    quantized = {}
    for name in sorted(os.listdir(args.modelopt)):
        if name.endswith(".safetensors"):
            quantized.update(load_file(os.path.join(args.modelopt, name)))

    inputs = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            def record(_module, arguments, name=name):
                inputs.setdefault(name, []).append(arguments[0].detach().reshape(-1, arguments[0].shape[-1]).clone())
            hooks.append(module.register_forward_pre_hook(record))

    samples, taken = [], 0
    with open(args.calib) as lines:
        for line in lines:
            if taken >= args.token_limit:
                break
            ids = json.loads(line)["input_ids"][: args.token_limit - taken]
            samples.append(ids)
            taken += len(ids)
    with torch.no_grad():
        for ids in samples:
            model(torch.tensor([ids]))

    errors = {}
    for name, module in model.named_modules():
        if name not in inputs:
            continue
        x = torch.cat(inputs[name])
        weight = module.weight.detach().to(torch.float32)
        q = dequantize(quantized[name + ".weight"], quantized[name + ".weight_scale"],
                       quantized[name + ".weight_scale_2"].to(torch.float32))
        x_tilde = fake_quantize_input(x, quantized[name + ".input_scale"].to(torch.float32))
        exact = x.double() @ weight.double().T
        approximate = x_tilde.double() @ q.double().T
        errors[name] = float(((exact - approximate).norm() / exact.norm()).item())
    json.dump({"tokens": taken, "samples": len(samples), "linear_output_relative_error": errors},
              sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
