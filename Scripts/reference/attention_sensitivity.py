#!/usr/bin/env python3
"""How much SmolLM2's layer-7 down_proj input amax depends on the attention kernel alone: transformers' BF16 forward
with SDPA against its own eager attention, over the 64 default calibration samples (the first 8 layers suffice).
Diagnostic for Docs/validation.md; needs torch and transformers; run from anywhere with .assets/smollm2 present.
"""
import json, torch, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
import os
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
m=__import__("os").path.join(ROOT, ".assets/smollm2")
tok=AutoTokenizer.from_pretrained(m)
samples=[]
for line in open(__import__("os").path.join(ROOT, "Sources/Calibration/Resources/default-calibration.jsonl")):
    ids=tok(json.loads(line)["text"])["input_ids"]
    if len(ids)<150: continue
    samples.append(ids[:1200])
    if len(samples)==64: break
def run(impl, dtype):
    model=AutoModelForCausalLM.from_pretrained(m, dtype=dtype, attn_implementation=impl)
    model.model.layers=model.model.layers[:8]
    res={}
    def hook(mod, inp):
        x=inp[0]; a=x.abs().amax().item()
        res.setdefault('cur',[]).append(a)
    model.model.layers[7].mlp.down_proj.register_forward_pre_hook(hook)
    model.model.layers[7].self_attn.o_proj.register_forward_pre_hook(lambda mod,inp: res.setdefault('o',[]).append(inp[0].abs().amax().item()))
    with torch.no_grad():
        for ids in samples:
            model.model(torch.tensor([ids]))
    d=res['cur']; o=res['o']
    i=max(range(len(d)),key=lambda k:d[k])
    print(impl, dtype, 'down max', max(d), 'sample', i, 'len', len(samples[i]), 'o max', max(o), flush=True)
    return d
a=run('sdpa', torch.bfloat16)
b=run('eager', torch.bfloat16)
top=sorted(range(64), key=lambda k:-a[k])[:5]
print('top samples sdpa', [(k, a[k], b[k]) for k in top])
