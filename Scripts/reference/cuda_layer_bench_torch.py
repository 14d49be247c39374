#!/usr/bin/env python3
"""PyTorch side of the CUDA layer benchmark (Docs/benchmarks.md), and the generator of its shared inputs.

  cuda_layer_bench_torch.py make DIR [--layers N] [--vocab V] [--tokens T] [--seed S] [--calib SAMPLES]
      writes DIR/model (config.json + model.safetensors: a Llama-3.3-70B-shaped model with N random BF16 layers),
      DIR/hidden.safetensors ("hidden", BF16 [T, 8192]) and DIR/lengths.json (sample lengths 150-1200 summing to T),
      and with --calib DIR/calib.jsonl (SAMPLES records of random token ids, 150-1200 tokens each)
  cuda_layer_bench_torch.py bench DIR [--repeats R] [--json PATH]
      times transformers' LlamaDecoderLayer (BF16, SDPA) over the same samples, one sample per forward (causal,
      batch 1), with forward pre-hooks that keep the running max |x| of the q/o/gate/down inputs on the device;
      also measures the BF16 GEMM peak (8192^3) and the device-to-device copy bandwidth.
"""
import argparse, json, os, random, statistics, sys, time
import torch
from safetensors.torch import save_file, load_file

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE = 8192, 64, 8, 28672


def config_dict(layers, vocab):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS, "num_hidden_layers": layers, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False,
    }


def sample_lengths(total, rng):
    """Uniform lengths in 150..1200 whose sum is exactly `total` (redraws until the last one fits)."""
    while True:
        lengths = []
        while sum(lengths) + 1200 < total:
            lengths.append(rng.randint(150, 1200))
        last = total - sum(lengths)
        if 150 <= last <= 1200:
            return lengths + [last]


def make(args):
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(os.path.join(args.dir, "model"), exist_ok=True)
    with open(os.path.join(args.dir, "model", "config.json"), "w") as f:
        json.dump(config_dict(args.layers, args.vocab), f, indent=2)
    dev = "cuda"
    tensors = {"model.embed_tokens.weight": (torch.randn(args.vocab, HIDDEN, device=dev) * 0.02).bfloat16().cpu(),
               "model.norm.weight": (1 + 0.1 * torch.randn(HIDDEN, device=dev)).bfloat16().cpu()}
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (kv, HIDDEN), "self_attn.v_proj": (kv, HIDDEN),
              "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
              "mlp.up_proj": (INTERMEDIATE, HIDDEN), "mlp.down_proj": (HIDDEN, INTERMEDIATE)}
    for layer in range(args.layers):
        p = f"model.layers.{layer}."
        for name, shape in shapes.items():
            # nn.Linear's default init scale (uniform ±1/sqrt(in)), as transformers' random init gives.
            bound = 1 / shape[1] ** 0.5
            tensors[p + name + ".weight"] = ((torch.rand(shape, device=dev) * 2 - 1) * bound).bfloat16().cpu()
        tensors[p + "input_layernorm.weight"] = (1 + 0.1 * torch.randn(HIDDEN, device=dev)).bfloat16().cpu()
        tensors[p + "post_attention_layernorm.weight"] = (1 + 0.1 * torch.randn(HIDDEN, device=dev)).bfloat16().cpu()
    save_file(tensors, os.path.join(args.dir, "model", "model.safetensors"), metadata={"format": "pt"})
    lengths = sample_lengths(args.tokens, rng)
    with open(os.path.join(args.dir, "lengths.json"), "w") as f:
        json.dump(lengths, f)
    save_file({"hidden": torch.randn(args.tokens, HIDDEN, device=dev).bfloat16().cpu()},
              os.path.join(args.dir, "hidden.safetensors"))
    if args.calib:
        # Token-id calibration records (lengths 150-1200) for an end-to-end `coordctl quantize --calib`.
        with open(os.path.join(args.dir, "calib.jsonl"), "w") as f:
            for _ in range(args.calib):
                n = rng.randint(150, 1200)
                f.write(json.dumps({"input_ids": [rng.randrange(args.vocab) for _ in range(n)]}) + "\n")
    print(f"made {args.dir}: {args.layers} layers, vocab {args.vocab}, {len(lengths)} samples, {sum(lengths)} tokens")


def bench(args):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    with open(os.path.join(args.dir, "model", "config.json")) as f:
        cfg = json.load(f)
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    dev = torch.device("cuda")
    layer = LlamaDecoderLayer(config, layer_idx=0).to(dev, torch.bfloat16).eval()
    weights = load_file(os.path.join(args.dir, "model", "model.safetensors"))
    state = {k[len("model.layers.0."):]: v for k, v in weights.items() if k.startswith("model.layers.0.")}
    missing = layer.load_state_dict(state, strict=True)
    rotary = LlamaRotaryEmbedding(config=config, device=dev)
    hidden = load_file(os.path.join(args.dir, "hidden.safetensors"))["hidden"].to(dev)
    with open(os.path.join(args.dir, "lengths.json")) as f:
        lengths = json.load(f)
    offsets = [0]
    for n in lengths[:-1]:
        offsets.append(offsets[-1] + n)

    amax = {g: torch.zeros((), device=dev, dtype=torch.float32) for g in ("qkv", "o", "gateUp", "down")}
    def hook(group):
        def record(module, inputs):
            amax[group] = torch.maximum(amax[group], inputs[0].detach().abs().amax().float())
        return record
    layer.self_attn.q_proj.register_forward_pre_hook(hook("qkv"))
    layer.self_attn.o_proj.register_forward_pre_hook(hook("o"))
    layer.mlp.gate_proj.register_forward_pre_hook(hook("gateUp"))
    layer.mlp.down_proj.register_forward_pre_hook(hook("down"))

    positions = torch.arange(max(lengths), device=dev).unsqueeze(0)
    def run():
        for offset, n in zip(offsets, lengths):
            x = hidden[offset:offset + n].unsqueeze(0)
            pos = positions[:, :n]
            emb = rotary(x, pos)
            out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=emb)
            _ = out[0] if isinstance(out, tuple) else out

    tokens = sum(lengths)
    gemm_flops = 2.0 * tokens * HIDDEN * (HIDDEN + 2 * KV_HEADS * 128 + HIDDEN + 3 * INTERMEDIATE)
    attention_flops = sum(2.0 * HEADS * 128 * n * (n + 1) for n in lengths)
    times = []
    with torch.inference_mode():
        for i in range(2 + args.repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); run(); stop.record(); torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(stop))
    ms = statistics.median(times)
    result = {"tokens": tokens, "samples": len(lengths), "forwardMs": ms, "tokensPerSecond": tokens / ms * 1000,
              "tflops": (gemm_flops + attention_flops) / (ms / 1000) / 1e12,
              "amax": {g: float(v) for g, v in amax.items()}, "torch": torch.__version__,
              "device": torch.cuda.get_device_name()}
    print(f"PyTorch {torch.__version__} LlamaDecoderLayer (bf16, sdpa, batch 1 per sample, amax hooks): {ms:.2f} ms for "
          f"{tokens} tokens = {tokens / ms * 1000:.0f} tokens/s, {result['tflops']:.0f} TFLOP/s")
    print("PyTorch amax: " + " ".join(f"{g} {v:.6g}" for g, v in result["amax"].items()))

    # Measured ceilings, as METHOD.md asks: BF16 GEMM on random data, device-to-device copy.
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    gemm_times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); a @ b; e.record(); torch.cuda.synchronize(); gemm_times.append(s.elapsed_time(e))
    peak = 2 * 8192 ** 3 / (statistics.median(gemm_times) / 1000) / 1e12
    src = torch.empty(2 << 30, dtype=torch.uint8, device=dev).fill_(60)
    dst = torch.empty_like(src)
    copy_times = []
    for i in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); dst.copy_(src); e.record(); torch.cuda.synchronize()
        if i >= 2:
            copy_times.append(s.elapsed_time(e))
    copy = 2 * (2 << 30) / (statistics.median(copy_times) / 1000) / 1e9
    result["gemmPeakTFLOPS"] = peak
    result["copyGBps"] = copy
    print(f"PyTorch BF16 GEMM 8192^3: {peak:.0f} TFLOP/s; device-to-device copy 2 GiB: {copy:.0f} GB/s (read + write)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make"); m.add_argument("dir"); m.add_argument("--layers", type=int, default=1)
    m.add_argument("--vocab", type=int, default=256); m.add_argument("--tokens", type=int, default=16384)
    m.add_argument("--seed", type=int, default=0); m.add_argument("--calib", type=int, default=0)
    b = sub.add_parser("bench"); b.add_argument("dir"); b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json")
    args = parser.parse_args()
    make(args) if args.command == "make" else bench(args)


if __name__ == "__main__":
    main()
