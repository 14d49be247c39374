#!/usr/bin/env python3
"""llm-compressor's GPTQ W4A4 (NVFP4) on the calibration samples `coordctl quantize` would choose, for the GPTQ
comparison in Docs/validation.md (not run in CI).

    llmcompressor_gptq_w4a4.py MODEL_DIR CALIB_JSONL OUTPUT_DIR [--samples 64] [--min-tokens 150] [--max-tokens 1200]
                               [--actorder static|weight|group|none]

Samples: records in file order, those under --min-tokens skipped, longer ones cut to --max-tokens, the first
--samples kept (the same rule as coordctl and modelopt_reference.py). Recipe: GPTQModifier on every Linear but
lm_head, scheme NVFP4, block size 128, dampening 0.01. Writes the compressed-tensors checkpoint to OUTPUT_DIR and
prints the seconds `oneshot` took. Judge it with `coordctl eval --original MODEL_DIR --quantized OUTPUT_DIR`.
needs: torch, transformers, llmcompressor (PyPI), datasets
"""
import argparse
import json
import os
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_samples import select_samples  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("output")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=1200)
    parser.add_argument("--actorder", default="static", choices=["static", "weight", "group", "none"])
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    samples = select_samples(args.calib, tokenizer, args.samples, args.min_tokens, args.max_tokens)
    print(f"{len(samples)} samples, {sum(map(len, samples))} tokens", flush=True)
    dataset = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    recipe = GPTQModifier(targets="Linear", scheme="NVFP4", ignore=["lm_head"], block_size=128, dampening_frac=0.01,
                          actorder=None if args.actorder == "none" else args.actorder)
    started = time.time()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(samples),
            max_seq_length=args.max_tokens)
    seconds = time.time() - started
    model.save_pretrained(args.output, save_compressed=True)
    tokenizer.save_pretrained(args.output)
    print(json.dumps({"tool": "llmcompressor " + __import__("llmcompressor").__version__, "oneshot_seconds": seconds,
                      "samples": len(samples), "tokens": sum(map(len, samples)), "actorder": args.actorder}))


if __name__ == "__main__":
    main()
