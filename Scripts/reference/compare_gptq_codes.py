#!/usr/bin/env python3
"""compare_gptq_codes.py A B [C ...] — the E2M1 codes and block scales of NVFP4 checkpoints or reference files, A against
each other one: per Linear, the share of the 4-bit codes that differ and whether the FP8 block scales are byte-identical.
A and the others are `coordctl quantize` output directories or single .safetensors files (e.g. the GPTQ references in
Tests/Fixtures). Used to judge GPTQ on CUDA against GPTQ on the CPU and the PyTorch reference. Needs torch."""
import glob, os, sys
import torch
from safetensors.torch import load_file


def tensors(path):
    if os.path.isfile(path):
        return load_file(path)
    merged = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        merged.update(load_file(file))
    return merged


def codes(packed):
    raw = packed.contiguous().view(-1).view(torch.uint8)
    return torch.stack([raw & 0x0F, raw >> 4], dim=1).view(-1)


first = tensors(sys.argv[1])
linears = sorted(name[: -len(".weight_packed")] for name in first if name.endswith(".weight_packed"))
for other_path in sys.argv[2:]:
    other = tensors(other_path)
    differing = total = 0
    worst = (0.0, "")
    scale_mismatch = []
    for linear in linears:
        a, b = codes(first[linear + ".weight_packed"]), codes(other[linear + ".weight_packed"])
        count = int((a != b).sum())
        differing += count
        total += a.numel()
        worst = max(worst, (count / a.numel(), linear))
        sa = first[linear + ".weight_scale"].contiguous().view(-1).view(torch.uint8)
        sb = other[linear + ".weight_scale"].contiguous().view(-1).view(torch.uint8)
        if not torch.equal(sa, sb):
            scale_mismatch.append(linear)
    print(f"{sys.argv[1]} vs {other_path}: {differing} of {total} codes differ ({100 * differing / total:.3f}%), "
          f"worst {100 * worst[0]:.2f}% ({worst[1]}); block scales identical in {len(linears) - len(scale_mismatch)} of {len(linears)} Linears"
          + (f" (differ: {', '.join(scale_mismatch[:4])})" if scale_mismatch else ""))
