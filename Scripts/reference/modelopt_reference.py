#!/usr/bin/env python3
"""Reference NVFP4 export with NVIDIA modelopt, for validation (not run in CI).

Runs modelopt's mtq.quantize(NVFP4_DEFAULT_CFG) with a BF16 forward over calibration samples chosen by the same
rules as `coordctl quantize` (records in file order, records under --min-tokens skipped, longer ones truncated
to --max-tokens, the first --samples kept), exports with export_hf_checkpoint, and writes a JSON digest of the
export: SHA-256 of every tensor's bytes, plus weight_scale_2 and input_scale values.

usage: modelopt_reference.py MODEL_DIR CALIB_JSONL EXPORT_DIR DIGEST_JSON [--samples 64] [--min-tokens 150] [--max-tokens 1200]
needs: torch, transformers, nvidia-modelopt, safetensors (CPU is fine)
"""
import argparse, hashlib, json, os, struct, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import modelopt.torch.quantization as mtq
from modelopt.torch.export import export_hf_checkpoint

from calibration_samples import select_samples


def digest(export_dir):
    out = {}
    for name in sorted(os.listdir(export_dir)):
        if not name.endswith(".safetensors"):
            continue
        data = open(os.path.join(export_dir, name), "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for tensor, info in header.items():
            if tensor == "__metadata__":
                continue
            b, e = info["data_offsets"]
            raw = data[base + b:base + e]
            entry = {"dtype": info["dtype"], "shape": info["shape"], "sha256": hashlib.sha256(raw).hexdigest()}
            if info["dtype"] == "F32" and len(raw) == 4:
                entry["value"] = struct.unpack("<f", raw)[0]
            out[tensor] = entry
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model"); p.add_argument("calib"); p.add_argument("export"); p.add_argument("digest")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=1200)
    p.add_argument("--device", default="cpu", help="where modelopt calibrates: cpu (as the digest was made) or cuda")
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).to(a.device)
    model.eval()
    samples = select_samples(a.calib, tokenizer, a.samples, a.min_tokens, a.max_tokens)
    print(f"{len(samples)} samples, {sum(map(len, samples))} tokens")

    def forward_loop(m):
        with torch.no_grad():
            for ids in samples:
                m(torch.tensor([ids], device=a.device))

    t0 = time.time()
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, forward_loop)
    t1 = time.time()
    export_hf_checkpoint(model, export_dir=a.export)
    t2 = time.time()
    print(f"modelopt: quantize {t1 - t0:.1f} s, export {t2 - t1:.1f} s, total {t2 - t0:.1f} s")
    result = {"tool": "nvidia-modelopt " + __import__("modelopt").__version__, "samples": len(samples),
              "tokens": sum(map(len, samples)), "seconds": {"quantize": t1 - t0, "export": t2 - t1},
              "tensors": digest(a.export)}
    with open(a.digest, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
