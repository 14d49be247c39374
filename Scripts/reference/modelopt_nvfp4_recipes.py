#!/usr/bin/env python3
"""modelopt's NVFP4 W4A4 recipes on SmolLM2-135M, held-out perplexity of each, for the GPTQ comparison in
Docs/validation.md (issue 14; not run in CI).

    modelopt_nvfp4_recipes.py MODEL_DIR CALIB_JSONL HELDOUT_JSONL --recipe NAME [--recipe NAME ...]
                              [--samples 64] [--eval-samples 16] [--min-tokens 150] [--max-tokens 1200]
                              [--export-dir DIR] [--output RESULTS.jsonl] [--device cpu|cuda]

For each recipe: a fresh float32 copy of the model, `mtq.quantize(model, config, forward_loop)` where the loop runs
the calibration samples one per forward (records in file order, those under --min-tokens skipped, longer ones cut
to --max-tokens, the first --samples kept: the rule of `coordctl quantize`, calibration_samples.py), timed; then the
perplexity of the fake-quantized model (modelopt's own quantizers: its calibrated amaxes, block scales, AWQ
pre-quant scales, GPTQ-updated weights, activation fake-quantization) on the held-out samples chosen by the same
rule (--eval-samples, as `coordctl eval`), each scored on its own, row t predicting token t+1. The unquantized
model's perplexity is printed first. With --export-dir, the recipe's `export_hf_checkpoint` is also written to
DIR/NAME, and the script says whether the export holds anything that an evaluator replacing only the Linear weights
would miss (pre_quant_scale tensors, changed norm weights).

CPU: modelopt 0.47's NVFP4 fake quantization has no pure-PyTorch path. The dynamic per-16 block quantizer (weights
of the max/AWQ recipes and every activation quantizer) asserts a CUDA amax, then calls a Triton kernel or a CUDA
extension; the static per-block quantizer (weights of the MSE / local-Hessian / GPTQ recipes) calls a Triton kernel
only; and modelopt sets Triton up only when CUDA is present. `install_cpu_fallback` puts our own PyTorch versions
of those two entry points in the modules modelopt calls them from (same inputs, same outputs: FP8 E4M3 block scales
under the global amax, the E2M1 grid with torch_w4a4_eval.py's ties). modelopt's own code still decides every amax,
scale and weight. Without Triton, modelopt's GPTQ takes its unfused loop, which fake-quantizes the whole weight once
per column: far too slow on a small CPU (6 of SmolLM2's 210 Linears in about 2 minutes on the 2-core VM).

GPU: with --device cuda the model, the calibration forwards and the perplexity run on the GPU, and modelopt uses its
own Triton kernels and fused GPTQ (no fallback is installed: the header's "cpu_fallback" says which ran).

Recipes: the NVFP4 W4A4 presets of `modelopt.torch.quantization` by their names (NVFP4_DEFAULT_CFG, ...), plus
NVFP4_GPTQ, which is NVFP4_DEFAULT_CFG with the "gptq" calibration algorithm (modelopt has no GPTQ preset; by
default its GPTQ takes every layer's Hessian from the unquantized model), and NVFP4_GPTQ_LAYERWISE, the same with
`layerwise.enable` (decoder layers one at a time, each one's Hessians from the already quantized layers before it).

needs: torch, transformers, nvidia-modelopt (0.47.0 also imports requests), safetensors
"""
import argparse
import copy
import json
import os
import sys
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration_samples import select_samples  # noqa: E402
from torch_w4a4_eval import e2m1_round, perplexity  # noqa: E402

FP8_MAX = 448.0


def dynamic_block_fp4(x, global_amax, block_size=16, **_ignored):
    """NVFP4 fake quantization with a dynamic block scale per `block_size` consecutive elements of the last dim:
    block scale = block amax / 6, stored as FP8 E4M3 relative to global_amax / (6 · 448)."""
    if x.shape[-1] % block_size:
        raise ValueError(f"last dim {x.shape[-1]} is not a multiple of {block_size}")
    blocks = x.reshape(-1, block_size).to(torch.float32)
    unit = global_amax.to(torch.float32).reshape(()) / (6.0 * FP8_MAX)
    unit = torch.where(unit > 0, unit, torch.full_like(unit, 1e-12))
    code = (blocks.abs().amax(dim=1, keepdim=True) / (6.0 * unit)).clamp(max=FP8_MAX)
    scale = code.to(torch.float8_e4m3fn).to(torch.float32) * unit
    scale = torch.where(scale >= 1e-5, scale, torch.ones_like(scale))
    return (e2m1_round(blocks / scale) * scale).reshape(x.shape).to(x.dtype)


def static_block_fp4(x, amax, global_amax=None, quantize_block_scales=True, fp8_max_for_normalization=FP8_MAX,
                     out_dtype=None):
    """NVFP4 fake quantization with a given amax per block (x.numel() / amax.numel() consecutive elements):
    block scale = amax / 6, optionally rounded to FP8 E4M3 under the global amax (modelopt's scaled_e4m3)."""
    from modelopt.torch.quantization.tensor_quant import scaled_e4m3_impl

    count = amax.numel()
    if x.numel() % count:
        raise ValueError(f"x.numel() {x.numel()} is not a multiple of amax.numel() {count}")
    scale = amax.to(torch.float32) / 6.0
    if quantize_block_scales:
        top = amax.to(torch.float32).max() if global_amax is None else global_amax.to(torch.float32)
        scale = scaled_e4m3_impl(scale, top * (FP8_MAX / fp8_max_for_normalization) / 6.0)
    scale = scale.reshape(count, 1)
    unusable = (scale == 0) | torch.isnan(scale) | torch.isinf(scale)
    safe = torch.where(unusable, torch.ones_like(scale), scale)
    blocks = x.reshape(count, -1).to(torch.float32)
    y = torch.where(scale == 0, torch.zeros_like(blocks), e2m1_round(blocks / safe) * safe)
    return y.reshape(x.shape).to(out_dtype or x.dtype)


def install_cpu_fallback():
    """Points the names modelopt's tensor_quant calls for NVFP4 fake quantization at the functions above: its
    dynamic-block op (NVFP4 on CPU only; every other case goes to modelopt's own op) and the static-block kernel."""
    import modelopt.torch.kernels.quantization.gemm as kernels
    import modelopt.torch.quantization.tensor_quant as tensor_quant

    if kernels.IS_AVAILABLE:
        return False  # real Triton kernels (CUDA): leave them alone
    modelopt_op = tensor_quant.dynamic_block_quantize_op

    def dynamic_op(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits):
        nvfp4 = (num_bits, exponent_bits, scale_num_bits, scale_exponent_bits) == (4, 2, 8, 4)
        if nvfp4 and amax is not None and not inputs.is_cuda:
            return dynamic_block_fp4(inputs, amax.amax() if amax.numel() != 1 else amax, block_size)
        return modelopt_op(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits)

    tensor_quant.dynamic_block_quantize_op = dynamic_op
    kernels.static_blockwise_fp4_fake_quant = static_block_fp4
    kernels.IS_AVAILABLE = True
    return True


def recipe_config(mtq, name):
    if name in ("NVFP4_GPTQ", "NVFP4_GPTQ_LAYERWISE"):
        config = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
        config["algorithm"] = {"method": "gptq"}
        if name == "NVFP4_GPTQ_LAYERWISE":  # one decoder layer at a time, Hessians from quantized predecessors
            config["algorithm"]["layerwise"] = {"enable": True}
        return config
    return copy.deepcopy(getattr(mtq, name))


def inspect_export(directory, original):
    """What in the export an evaluator that only swaps Linear weights would not see."""
    from safetensors import safe_open

    files = [n for n in os.listdir(directory) if n.endswith(".safetensors")]
    reference = original.state_dict()
    extra, changed = [], []
    for name in files:
        with safe_open(os.path.join(directory, name), framework="pt") as f:
            for key in f.keys():
                if "pre_quant_scale" in key or "svdquant" in key or "lora" in key:
                    extra.append(key)
                elif key.endswith("norm.weight") and key in reference:
                    if not torch.equal(f.get_tensor(key).to(torch.float32), reference[key].to(torch.float32).cpu()):
                        changed.append(key)
    with open(os.path.join(directory, "config.json")) as f:
        quantization = json.load(f).get("quantization_config", {})
    return {"extra_tensors": len(extra), "extra_examples": extra[:3], "changed_norms": len(changed),
            "quant_method": quantization.get("quant_method"),
            "evaluable_by_linear_swap": not extra and not changed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("heldout")
    parser.add_argument("--recipe", action="append", required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--min-tokens", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--export-dir")
    parser.add_argument("--output", help="append one JSON line per recipe here")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for modelopt's Triton kernels")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import modelopt
    import modelopt.torch.quantization as mtq

    fallback = install_cpu_fallback()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    calibration = select_samples(args.calib, tokenizer, args.samples, args.min_tokens, args.max_tokens)
    heldout = select_samples(args.heldout, tokenizer, args.eval_samples, args.min_tokens, args.max_tokens)
    original = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    original.eval()
    original_ppl, predicted = perplexity(original, heldout)
    header = {"modelopt": modelopt.__version__, "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "cpu_fallback": fallback,
              "threads": torch.get_num_threads(), "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "calibration": {"samples": len(calibration), "tokens": sum(map(len, calibration))},
              "heldout": {"samples": len(heldout), "tokens": sum(map(len, heldout)), "predicted": predicted},
              "original_perplexity": original_ppl}
    print(json.dumps(header), flush=True)

    for name in args.recipe:
        config = recipe_config(mtq, name)
        model = copy.deepcopy(original)

        def forward_loop(m):
            with torch.no_grad():
                for ids in calibration:
                    m(torch.tensor([ids], dtype=torch.long, device=args.device))

        result = {"recipe": name, "algorithm": config.get("algorithm")}
        started = time.time()
        try:
            mtq.quantize(model, config, forward_loop)
        except Exception as error:  # report and go on with the next recipe
            result.update(error=f"{type(error).__name__}: {error}", seconds=time.time() - started)
            print(json.dumps(result, default=str), flush=True)
            if args.output:
                with open(args.output, "a") as f:
                    f.write(json.dumps({**header, **result}, default=str) + "\n")
            continue
        result["quantize_seconds"] = time.time() - started
        from modelopt.torch.quantization.nn import TensorQuantizer

        enabled = [n for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled]
        result["enabled_weight_quantizers"] = sum(n.endswith("weight_quantizer") for n in enabled)
        result["enabled_input_quantizers"] = sum(n.endswith("input_quantizer") for n in enabled)
        started = time.time()
        quantized_ppl, _ = perplexity(model, heldout)
        result.update(eval_seconds=time.time() - started, original_perplexity=original_ppl,
                      quantized_perplexity=quantized_ppl, relative_increase=quantized_ppl / original_ppl - 1)
        if args.export_dir:
            from modelopt.torch.export import export_hf_checkpoint

            directory = os.path.join(args.export_dir, name)
            try:
                export_hf_checkpoint(model, export_dir=directory)
                tokenizer.save_pretrained(directory)
                result["export"] = {"dir": directory, **inspect_export(directory, original)}
            except Exception as error:
                result["export"] = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result, default=str), flush=True)
        if args.output:
            with open(args.output, "a") as f:
                f.write(json.dumps({**header, **result}, default=str) + "\n")
        del model


if __name__ == "__main__":
    main()
