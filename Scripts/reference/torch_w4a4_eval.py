#!/usr/bin/env python3
"""Independent PyTorch emulation of an NVFP4 checkpoint, to validate `coordctl eval` (not run in CI).

Loads the original model with transformers in float32, reads the NVFP4 checkpoint (compressed-tensors or
modelopt layout) with safetensors, dequantizes every Linear weight with its own code, fake-quantizes every
Linear input to NVFP4 with dynamic per-16 block scales under the stored activation scale (W4A4 only), and
prints the perplexity of the original and of the emulated model over the given samples.

Usage:
  torch_w4a4_eval.py --original DIR --quantized DIR --samples SAMPLES.jsonl [--output RESULT.json]

SAMPLES.jsonl has one JSON object per line with an `input_ids` array (as written by
`coordctl eval --dump-samples`). Each sample is scored on its own: row t predicts token t+1.
"""
import argparse
import copy
import json
import math
import os
import sys

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

# E2M1 magnitudes by code (spec §1); bit 3 is the sign.
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                           dtype=torch.float32)
FP8_MIN_POSITIVE = 2.0 ** -9
FP8_MAX = 448.0


def e2m1_round(y):
    """Rounds to the nearest E2M1 value with the spec's ties (0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4),
    saturating at ±6; the sign is kept for y < 0."""
    a = y.abs()
    magnitude = torch.zeros_like(a)
    magnitude = torch.where(a > 0.25, torch.full_like(a, 0.5), magnitude)
    magnitude = torch.where(a >= 0.75, torch.full_like(a, 1.0), magnitude)
    magnitude = torch.where(a > 1.25, torch.full_like(a, 1.5), magnitude)
    magnitude = torch.where(a >= 1.75, torch.full_like(a, 2.0), magnitude)
    magnitude = torch.where(a > 2.5, torch.full_like(a, 3.0), magnitude)
    magnitude = torch.where(a >= 3.5, torch.full_like(a, 4.0), magnitude)
    magnitude = torch.where(a > 5.0, torch.full_like(a, 6.0), magnitude)
    return torch.where(y < 0, -magnitude, magnitude)


def fake_quantize_input(x, sx):
    """NVFP4 W4A4 activation emulation: per-16 dynamic block scales under the global scale sx, in float32."""
    shape = x.shape
    blocks = x.reshape(-1, 16).to(torch.float32)
    sx = torch.tensor(sx, dtype=torch.float32)
    block_amax = blocks.abs().amax(dim=1, keepdim=True)
    scale = block_amax / (6.0 * sx)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = scale.clamp(FP8_MIN_POSITIVE, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    denominator = scale * sx
    q = e2m1_round(blocks / denominator)
    return (q * denominator).reshape(shape).to(x.dtype)


def decode_fp8(codes_u8):
    return codes_u8.contiguous().view(torch.float8_e4m3fn).to(torch.float32)


def dequantize(packed_u8, scales_u8, s2):
    """value(q) · (sf · S2); packed is [out, in/2] with element 2k in the low nibble, scales [out, in/16]."""
    rows, half = packed_u8.shape
    low = (packed_u8 & 0x0F).to(torch.int64)
    high = (packed_u8 >> 4).to(torch.int64)
    codes = torch.stack([low, high], dim=-1).reshape(rows, half * 2)
    values = E2M1_VALUES[codes]
    block_scale = decode_fp8(scales_u8) * torch.tensor(s2, dtype=torch.float32)
    return (values.reshape(rows, -1, 16) * block_scale.unsqueeze(-1)).reshape(rows, half * 2)


class Checkpoint:
    def __init__(self, directory):
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
        quantization = config.get("quantization_config")
        if quantization is None:
            sys.exit(f"{directory}/config.json: no quantization_config; not a quantized checkpoint")
        method = quantization.get("quant_method")
        if method == "compressed-tensors":
            group = next(iter(quantization["config_groups"].values()))
            self.names = ("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale")
            self.reciprocal = True
            self.w4a4 = group.get("input_activations") is not None
        elif method == "modelopt":
            self.names = ("weight", "weight_scale", "weight_scale_2", "input_scale")
            self.reciprocal = False
            self.w4a4 = True
        else:
            sys.exit(f"{directory}/config.json: quant_method {method!r} is not an NVFP4 layout")
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.tensors = {}
        for name in files:
            with safe_open(os.path.join(directory, name), framework="pt") as f:
                for key in f.keys():
                    self.tensors[key] = f.get_tensor(key)

    def scale(self, module, suffix):
        stored = self.tensors[f"{module}.{suffix}"].to(torch.float32).reshape(())
        return float(torch.tensor(1.0, dtype=torch.float32) / stored) if self.reciprocal else float(stored)

    def weight(self, module):
        packed, scales, global_scale, _ = self.names
        return dequantize(self.tensors[f"{module}.{packed}"], self.tensors[f"{module}.{scales}"],
                          self.scale(module, global_scale))

    def input_scale(self, module):
        return self.scale(module, self.names[3]) if self.w4a4 else None


def perplexity(model, samples):
    total, count = 0.0, 0
    device = next(model.parameters()).device  # the model's own device: CPU here, CUDA on the GPU machine
    with torch.no_grad():
        for ids in samples:
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=input_ids).logits[0].to(torch.float32)
            log_probs = torch.log_softmax(logits[:-1].to(torch.float64), dim=-1)
            targets = input_ids[0, 1:]
            total += float(-log_probs[torch.arange(len(targets), device=device), targets].sum())
            count += len(targets)
    return math.exp(total / count), count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True)
    parser.add_argument("--quantized", required=True)
    parser.add_argument("--samples", required=True)
    parser.add_argument("--output")
    args = parser.parse_args()

    with open(args.samples) as f:
        samples = [json.loads(line)["input_ids"] for line in f if line.strip()]
    torch.manual_seed(0)
    original = AutoModelForCausalLM.from_pretrained(args.original, dtype=torch.float32)
    original.eval()
    checkpoint = Checkpoint(args.quantized)

    emulated = copy.deepcopy(original)
    for name, module in emulated.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.startswith("model.layers."):
            continue
        weight = checkpoint.weight(name)
        if tuple(weight.shape) != tuple(module.weight.shape):
            sys.exit(f"{name}: checkpoint weight {tuple(weight.shape)} != model {tuple(module.weight.shape)}")
        module.weight.data.copy_(weight)
        sx = checkpoint.input_scale(name)
        if sx is not None:
            module.register_forward_pre_hook(lambda _m, inputs, sx=sx: (fake_quantize_input(inputs[0], sx),) + inputs[1:])

    original_ppl, predicted = perplexity(original, samples)
    emulated_ppl, _ = perplexity(emulated, samples)
    result = {
        "original_perplexity": original_ppl,
        "quantized_perplexity": emulated_ppl,
        "relative_increase": emulated_ppl / original_ppl - 1,
        "samples": len(samples),
        "tokens": sum(len(s) for s in samples),
        "predicted_tokens": predicted,
        "scheme": "nvfp4" if checkpoint.w4a4 else "nvfp4a16",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
