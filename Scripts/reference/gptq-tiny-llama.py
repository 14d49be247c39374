#!/usr/bin/env python3
"""GPTQ NVFP4 codes of every Linear of a model, with Hessians from a transformers forward over calibration samples and
the numpy GPTQ of gptq_nvfp4_reference.py: an independent reference for `coordctl quantize --algorithm gptq`.

    gptq-tiny-llama.py SOURCE_DIR CALIB_JSONL OUTPUT.safetensors [--dtype bfloat16|float32] [--activation-order]
                       [--propagate original|quantized]

- One forward per calibration sample (file order, each its own sequence), eager attention, in --dtype (bfloat16 is
  what `coordctl quantize` emulates by default, as modelopt calibrates).
- Per layer, one Hessian per shared input: q/k/v (input_layernorm output), o_proj, gate/up, down_proj;
  H = 2/n X^T X over all n calibration tokens, float64.
- Per Linear: S2 = f32(max|W| over its fused group / 2688), block scales from the original weight (round-to-nearest's),
  E2M1 codes from GPTQ (block size 128, dampening 0.01 of the mean diagonal).
- --propagate quantized (sequential, as llm-compressor's pipeline): layer L's Hessians come from a forward in which
  layers before L already carry their dequantized GPTQ weights and layer L still its original ones; then layer L's
  weights are replaced too. original: every Hessian from the unquantized model's forward.
- OUTPUT holds NAME.weight_packed (U8 [out, in/2], element 2k in the low nibble) and NAME.weight_scale (U8 E4M3 codes
  [out, in/16]) per Linear; the parameters are in the metadata.
Needs torch, transformers, numpy and safetensors.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptq_nvfp4_reference as reference  # noqa: E402

GROUPS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up", "up_proj": "gate_up",
          "down_proj": "down"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("calib")
    parser.add_argument("output")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--activation-order", action="store_true")
    parser.add_argument("--propagate", choices=["original", "quantized"], default="original")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.source, dtype=dtype, attn_implementation="eager")
    model.eval()
    with open(args.calib) as lines:
        samples = [json.loads(line)["input_ids"] for line in lines if line.strip()]
    modules = {name: module for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")}
    weights = {name: module.weight.detach().to(torch.float32).numpy().copy() for name, module in modules.items()}
    group_amax = {}
    for name, weight in weights.items():
        prefix, leaf = name.rsplit(".", 1)
        key = (prefix.rsplit(".", 1)[0], GROUPS[leaf])
        group_amax[key] = max(group_amax.get(key, 0.0), float(np.abs(weight).max()))

    def capture(names):
        """Each named Linear's input rows over every calibration sample, one forward per sample."""
        inputs, hooks = {}, []
        for name in names:
            def record(_module, arguments, name=name):
                x = arguments[0].detach().reshape(-1, arguments[0].shape[-1]).to(torch.float64)
                inputs.setdefault(name, []).append(x.numpy())
            hooks.append(modules[name].register_forward_pre_hook(record))
        with torch.no_grad():
            for ids in samples:
                model(torch.tensor([ids]))
        for hook in hooks:
            hook.remove()
        return inputs

    reference.DAMPENING = 0.01
    reference.BLOCK_SIZE = 128
    layers = sorted({int(name.split(".")[2]) for name in modules})
    tensors = {}
    inputs = capture(sorted(modules)) if args.propagate == "original" else None
    for layer in layers:
        names = sorted(name for name in modules if int(name.split(".")[2]) == layer)
        layer_inputs = inputs if inputs is not None else capture(names)
        for name in names:
            weight = weights[name]
            prefix, leaf = name.rsplit(".", 1)
            s2 = np.float32(np.float32(group_amax[(prefix.rsplit(".", 1)[0], GROUPS[leaf])]) / np.float32(2688))
            h = reference.hessian(np.concatenate(layer_inputs[name]))
            codes, scale_codes = reference.gptq(weight, h, s2, args.activation_order)
            tensors[name + ".weight_packed"] = reference.pack(codes)
            tensors[name + ".weight_scale"] = scale_codes.astype(np.uint8)
            rtn = reference.rtn_codes(weight, s2)
            print(f"{name}: GPTQ codes differ from round-to-nearest's in {np.mean(codes != rtn):.1%}", file=sys.stderr)
            if args.propagate == "quantized":
                dequantized = reference.dequantize(codes, scale_codes, s2)
                with torch.no_grad():
                    modules[name].weight.copy_(torch.from_numpy(dequantized).to(modules[name].weight.dtype))
    save_file(tensors, args.output, metadata={
        "forward_dtype": args.dtype, "samples": str(len(samples)), "tokens": str(sum(map(len, samples))),
        "block_size": "128", "dampening": "0.01", "activation_order": str(args.activation_order).lower(),
        "propagate": args.propagate,
        "torch": torch.__version__})


if __name__ == "__main__":
    main()
