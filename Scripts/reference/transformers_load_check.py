#!/usr/bin/env python3
"""Loads an NVFP4 compressed-tensors checkpoint in transformers (through the compressed-tensors package) and
reports perplexity on held-out text beside the original model's. A manual check, not run in CI.

usage: transformers_load_check.py ORIGINAL_DIR QUANTIZED_DIR HELDOUT_JSONL [--samples 8] [--max-tokens 512]
needs: torch, transformers, compressed-tensors
"""
import argparse, json, math, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def perplexity(model, samples):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in samples:
            x = torch.tensor([ids])
            out = model(x, labels=x)
            n = len(ids) - 1
            total += out.loss.item() * n
            count += n
    return math.exp(total / count), count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("original"); p.add_argument("quantized"); p.add_argument("heldout")
    p.add_argument("--samples", type=int, default=8); p.add_argument("--max-tokens", type=int, default=512)
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.original)
    samples = []
    for line in open(a.heldout, encoding="utf-8"):
        if line.strip():
            samples.append(tok(json.loads(line)["text"])["input_ids"][: a.max_tokens])
        if len(samples) == a.samples:
            break
    t0 = time.time()
    quantized = AutoModelForCausalLM.from_pretrained(a.quantized, dtype=torch.bfloat16)
    print(f"loaded {a.quantized} in {time.time() - t0:.1f} s as {type(quantized).__name__}")
    qcfg = getattr(quantized.config, "quantization_config", None)
    print("quantization_config:", type(qcfg).__name__, getattr(qcfg, "quant_method", None))
    linear = quantized.model.layers[0].self_attn.q_proj
    print("layers.0.q_proj:", type(linear).__name__, {k: tuple(v.shape) for k, v in linear.state_dict().items()})
    original = AutoModelForCausalLM.from_pretrained(a.original, dtype=torch.bfloat16)
    ppl_q, n = perplexity(quantized, samples)
    ppl_o, _ = perplexity(original, samples)
    print(f"perplexity over {len(samples)} held-out samples, {n} predicted tokens: original {ppl_o:.3f}, "
          f"quantized {ppl_q:.3f} ({(ppl_q / ppl_o - 1) * 100:+.1f}%), finite: {math.isfinite(ppl_q)}")


if __name__ == "__main__":
    main()
