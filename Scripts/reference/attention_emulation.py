#!/usr/bin/env python3
"""SmolLM2's layer-7 down_proj input amax (64 default samples, first 8 layers) with transformers' BF16 forward, but
attention replaced by an emulation of PyTorch's CPU flash-attention kernel for BF16 (blocks of 512 keys, running max,
unnormalized weights rounded to BF16, f32 accumulation, output times 1/sum), with its exp_u20 polynomial on the
8-lane vector part of each block (`u20`) or exact exp everywhere (`exact`). Diagnostic for Docs/validation.md.
usage: attention_emulation.py u20|exact   (needs torch, transformers, .assets/smollm2)"""
import json, os, sys, torch, numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer, AttentionInterface
ROOT=os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
m=os.path.join(ROOT,".assets/smollm2")
tok=AutoTokenizer.from_pretrained(m)
samples=[]
for line in open(os.path.join(ROOT,"Sources/Calibration/Resources/default-calibration.jsonl")):
    ids=tok(json.loads(line)["text"])["input_ids"]
    if len(ids)<150: continue
    samples.append(ids[:1200])
    if len(samples)==64: break

LN_MIN=np.array([0xc2aeac50],dtype=np.uint32).view(np.float32)[0]
LN_MAX=np.array([0x42b17218],dtype=np.uint32).view(np.float32)[0]
LOG2E=np.array([0x3fb8aa3b],dtype=np.uint32).view(np.float32)[0]
LN2=np.array([0x3f317218],dtype=np.uint32).view(np.float32)[0]
C=[np.float32(v) for v in (0.999999701,0.499991506,0.166676521,0.0418978221,0.00828929059)]
def fma(a,b,c):  # exact fused multiply-add in f32 via f64 (products of f32 exact in f64; one rounding of sum is close)
    return (a.double()*b.double()+c.double()).float()
def exp_u20(x):
    x=x.float()
    low = x < float(LN_MIN)
    s = x.clamp(min=float(LN_MIN), max=float(LN_MAX))
    fx = torch.floor(fma(s, torch.tensor(LOG2E), torch.tensor(0.5,dtype=torch.float32)))
    r = fma(-fx, torch.tensor(LN2), s)
    p = fma(r, torch.tensor(C[4]), torch.tensor(C[3]))
    p = fma(r, p, torch.tensor(C[2])); p = fma(r, p, torch.tensor(C[1])); p = fma(r, p, torch.tensor(C[0]))
    p = fma(r, p, torch.tensor(1.0,dtype=torch.float32))
    e = (fx - 1).to(torch.int32) + 127
    two = (e << 23).view(torch.float32)
    two = torch.where(low, torch.zeros_like(two), two)
    return (p*two)*2.0

MODE=sys.argv[1]  # u20 or exact
def flash_cpu(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    b,h,L,d=query.shape
    kvh=key.shape[1]; rep=h//kvh
    k=key.repeat_interleave(rep,dim=1); v=value.repeat_interleave(rep,dim=1)
    S=(query.float()@k.float().transpose(-1,-2))*float(scaling)
    mask=torch.ones(L,L,dtype=torch.bool).tril()
    S=S.masked_fill(~mask,float("-inf"))
    dst=torch.zeros(b,h,L,d); mx=torch.full((b,h,L,1),float("-inf")); sm=torch.zeros(b,h,L,1)
    for n in range(0,L,512):
        B=min(512,L-n); blk=S[...,n:n+B]
        tmax=torch.maximum(mx, blk.amax(-1,keepdim=True))
        z=blk-tmax
        vec=8*(B//8)
        if MODE=="u20":
            e=torch.cat([exp_u20(z[...,:vec]), torch.exp(z[...,vec:])],-1)
        else:
            e=torch.exp(z)
        e=torch.nan_to_num(e, nan=0.0)
        expt=torch.exp(mx-tmax); expt=torch.nan_to_num(expt,nan=0.0)
        sm=e.sum(-1,keepdim=True)+expt*sm
        dst=dst*expt + e.to(torch.bfloat16).float()@v[...,n:n+B,:].float()
        mx=tmax
    out=(dst*(1.0/sm)).to(torch.bfloat16)
    return out.transpose(1,2).contiguous(), None
AttentionInterface.register("cpuemul", flash_cpu)
model=AutoModelForCausalLM.from_pretrained(m, dtype=torch.bfloat16, attn_implementation="cpuemul")
model.model.layers=model.model.layers[:8]
res=[]
model.model.layers[7].mlp.down_proj.register_forward_pre_hook(lambda mod,inp: res.append(inp[0].abs().amax().item()))
with torch.no_grad():
    for ids in samples: model.model(torch.tensor([ids]))
i=max(range(len(res)),key=lambda k:res[k])
print(MODE, "layers.7.down max", max(res), "sample", i, "sample10", res[10], flush=True)
