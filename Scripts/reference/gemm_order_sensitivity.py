#!/usr/bin/env python3
"""Does GEMM summation order alone move SmolLM2's activation amax past 1% / 3.5%?
Run transformers' BF16 SDPA forward twice over the 64 default samples: (a) stock nn.Linear (oneDNN bf16 GEMM),
(b) every Linear as an f32 matmul of the same bf16 values, rounded to bf16 (same rounding points, other order)."""
import json, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
m = os.path.join(ROOT, ".assets/smollm2")
tok = AutoTokenizer.from_pretrained(m)
samples = []
for line in open(os.path.join(ROOT, "Sources/Calibration/Resources/default-calibration.jsonl")):
    ids = tok(json.loads(line)["text"])["input_ids"]
    if len(ids) < 150: continue
    samples.append(ids[:1200])
    if len(samples) == 64: break
model = AutoModelForCausalLM.from_pretrained(m, dtype=torch.bfloat16, attn_implementation="sdpa")
lins = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and "layers." in n}
def run(reorder):
    amax = {}
    hs = []
    for n, mod in lins.items():
        def pre(mod, inp, n=n):
            a = inp[0].abs().amax().float().item(); amax[n] = max(amax.get(n, 0.0), a)
        hs.append(mod.register_forward_pre_hook(pre))
        if reorder:
            def fwd(mod, inp, out):
                return (inp[0].float() @ mod.weight.float().t()).to(torch.bfloat16)
            hs.append(mod.register_forward_hook(fwd))
    with torch.no_grad():
        for ids in samples: model.model(torch.tensor([ids]))
    for h in hs: h.remove()
    return amax
a = run(False); print("stock done", flush=True)
b = run(True)
d = sorted(((abs(a[n]-b[n])/a[n]*100, n, a[n], b[n]) for n in a), reverse=True)
vals = sorted(x[0] for x in d)
print("Linears", len(d), "identical", sum(1 for x in d if x[0]==0), "median %.3f%%" % vals[len(vals)//2],
      "above 1%:", sum(1 for x in d if x[0]>1), "above 3.5%:", sum(1 for x in d if x[0]>3.5))
for x in d[:8]: print("%.2f%% %s %.5g %.5g" % x)
