#!/usr/bin/env python3
"""Which exp PyTorch's CPU flash-attention kernel uses for BF16 softmax weights (Docs/validation.md).

1. A probe with exactly representable scores (quarter-integer q, k) and one-hot values, so each output is one softmax
   weight times 1/sum: PyTorch's flash backend against emulations that round exp(s - max) to BF16, with exact exp or
   with a re-implementation of ATen's AVX2 `fexp_u20` (constants from the wheel's
   torch/include/ATen/cpu/vec/vec256/vec256_float.h) on the 8-lane vector part of each 512-key block.
2. The same on SmolLM2's layer-0 attention for the 350-token sample 10 of the default calibration set.
usage: flash_kernel_probe.py   (torch, transformers and .assets/smollm2; run on an AVX2 machine)"""
import json, os, numpy as np, torch, torch.nn.functional as F

def f32bits(bits): return torch.tensor(np.array([bits], dtype=np.uint32).view(np.float32)[0])
def fma(a, b, c): return (a.double() * b.double() + c.double()).float()  # one rounding of an exact product-sum
LOG2E, LN_MIN, LN_MAX = f32bits(0x3fb8aa3b), f32bits(0xc2aeac50), f32bits(0x42b17218)
C = [torch.tensor(np.float32(v)) for v in (0.00010703434948458272, 0.30354260500649682, -0.22433836478672356,
                                           -0.079204240219773236)]
TWO23 = torch.tensor(np.float32(2.0 ** 23)); BIAS = torch.tensor(np.float32(2.0 ** 23 * 127.0))

def fast_exp(x):
    """2^(x·log2 e): the fraction's power of two from a cubic, assembled in the exponent bits."""
    power = x * LOG2E
    fraction = power - torch.floor(power)
    correction = fma(fraction, C[3], C[2]); correction = fma(fraction, correction, C[1])
    correction = fma(fraction, correction, C[0])
    bits = torch.trunc(fma(TWO23.expand_as(power), power - correction, BIAS.expand_as(power))).to(torch.int64)
    result = bits.to(torch.int32).view(torch.float32).clone()
    result = torch.where(x < LN_MIN, torch.zeros_like(result), result)
    return torch.where(x > LN_MAX, torch.full_like(result, float("inf")), result)

bf = lambda t: t.to(torch.bfloat16).float()

def emulate(q, k, v, use_fast_exp):
    """One block (L ≤ 512): weights bf16(exp), output (P @ V) * (1/sum), as the kernel orders it."""
    L = q.shape[-2]
    s = (q.float() @ k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    z = s - s.amax(-1, keepdim=True)
    vector = 8 * (L // 8)
    e = torch.cat([fast_exp(z[..., :vector]) if use_fast_exp else torch.exp(z[..., :vector]), torch.exp(z[..., vector:])], -1)
    e = torch.nan_to_num(e, nan=0.0)
    return bf((bf(e) @ v.float()) * (1.0 / e.sum(-1, keepdim=True)))

def flash(q, k, v):
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).float()

torch.manual_seed(0)
L = 64
q = (torch.randint(-3, 4, (1, 1, L, 64)).float() / 4).to(torch.bfloat16)
k = (torch.randint(-3, 4, (1, 1, L, 64)).float() / 4).to(torch.bfloat16)
v = torch.eye(L, 64).reshape(1, 1, L, 64).to(torch.bfloat16)
reference = flash(q, k, v)
for fast in (False, True):
    print(f"probe L=64, {'fexp_u20' if fast else 'exact exp'}: {100 * (emulate(q, k, v, fast) != reference).float().mean():.3f}% of outputs differ")

from transformers import AutoModelForCausalLM, AutoTokenizer, AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
model_dir = os.path.join(root, ".assets/smollm2")
tokenizer = AutoTokenizer.from_pretrained(model_dir)
samples = []
for line in open(os.path.join(root, "Sources/Calibration/Resources/default-calibration.jsonl")):
    ids = tokenizer(json.loads(line)["text"])["input_ids"]
    if len(ids) >= 150: samples.append(ids[:1200])
    if len(samples) == 11: break
captured = {}
def capture(module, q, k, v, mask, **kwargs):
    captured.setdefault("qkv", (q, k, v))
    return sdpa_attention_forward(module, q, k, v, mask, **kwargs)
AttentionInterface.register("capture", capture)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="capture")
model.model.layers = model.model.layers[:1]
with torch.no_grad(): model.model(torch.tensor([samples[10]]))
q, k, v = captured["qkv"]
groups = q.shape[1] // k.shape[1]
k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
reference = flash(q, k, v)
for fast in (False, True):
    print(f"SmolLM2 layer 0, sample 10 ({q.shape[-2]} tokens), {'fexp_u20' if fast else 'exact exp'}: "
          f"{100 * (emulate(q, k, v, fast) != reference).float().mean():.3f}% of outputs differ")
