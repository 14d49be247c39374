#!/usr/bin/env python3
"""Three-way activation-amax comparison on a real model (Docs/validation.md, CUDA section).

  cuda_cpu_torch_amax.py ids MODEL_DIR TEXT_JSONL OUT.jsonl [--samples 64]
      tokenizes the first records of TEXT_JSONL (e.g. the built-in default-calibration.jsonl) with MODEL_DIR's
      tokenizer.json, keeps those of at least 150 tokens truncated to 1200, and writes them as input_ids records
  cuda_cpu_torch_amax.py compare MODEL_DIR IDS.jsonl CPU_OUT CUDA_OUT
      runs transformers' LlamaForCausalLM in BF16 with SDPA on the GPU, one sample per forward, with forward pre-hooks
      recording max |input| of every Linear (what modelopt's calibration observes), and prints how far the CPU and the
      CUDA `coordctl quantize` runs (their calibration.json) are from it and from each other.
"""
import json, sys
import torch


def ids(model_dir, text_path, out_path, samples):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    kept = 0
    with open(text_path) as f, open(out_path, "w") as out:
        for line in f:
            tokens = tokenizer.encode(json.loads(line)["text"]).ids
            if len(tokens) < 150:
                continue
            out.write(json.dumps({"input_ids": tokens[:1200]}) + "\n")
            kept += 1
            if kept == samples:
                break
    print(f"wrote {kept} samples to {out_path}")


def compare(model_dir, ids_path, cpu_dir, cuda_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    amax = {}
    def hook(name):
        def record(module, inputs):
            value = inputs[0].detach().abs().amax().float()
            amax[name] = torch.maximum(amax[name], value) if name in amax else value
        return record
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            module.register_forward_pre_hook(hook(name))
    samples = [json.loads(line)["input_ids"] for line in open(ids_path)]
    with torch.inference_mode():
        for tokens in samples:
            model.model(torch.tensor([tokens], device="cuda"))
    torch_amax = {k: float(v) for k, v in amax.items()}
    cpu = json.load(open(f"{cpu_dir}/calibration.json"))["activation_amax"]
    cuda = json.load(open(f"{cuda_dir}/calibration.json"))["activation_amax"]
    def stats(a, b, label):
        errors = sorted(((abs(a[k] / b[k] - 1), k) for k in b), reverse=True)
        over = sum(e > 0.01 for e, _ in errors)
        exact = sum(e == 0 for e, _ in errors)
        mean = sum(e for e, _ in errors) / len(errors)
        print(f"{label}: {len(errors)} modules, {exact} identical, mean {mean * 100:.3f}%, worst {errors[0][0] * 100:.3f}% "
              f"({errors[0][1]}), over 1%: {over}")
        return {"modules": len(errors), "identical": exact, "mean": mean, "worst": errors[0][0], "worstModule": errors[0][1], "over1pct": over}
    result = {"samples": len(samples), "tokens": sum(map(len, samples)), "torch": torch.__version__,
              "cudaVsCpu": stats(cuda, cpu, "CUDA vs CPU(bf16)"),
              "cudaVsTorch": stats(cuda, torch_amax, "CUDA vs PyTorch GPU bf16"),
              "cpuVsTorch": stats(cpu, torch_amax, "CPU(bf16) vs PyTorch GPU bf16")}
    json.dump(result, open(sys.argv[-1] if sys.argv[-1].endswith(".json") else "/dev/null", "w"), indent=2)


if __name__ == "__main__":
    if sys.argv[1] == "ids":
        samples = int(sys.argv[sys.argv.index("--samples") + 1]) if "--samples" in sys.argv else 64
        ids(sys.argv[2], sys.argv[3], sys.argv[4], samples)
    else:
        compare(*sys.argv[2:6])
