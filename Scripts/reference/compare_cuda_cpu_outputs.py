#!/usr/bin/env python3
"""compare_cuda_cpu_outputs.py CPU_OUT CUDA_OUT — compares two `coordctl quantize` outputs of the same model:
every tensor except the input scales must be byte-identical (packed weights, block scales, weight_scale_2,
unquantized tensors); input scales and calibration.json's activation_amax are compared relatively. Exits 1 if a byte
differs. Needs torch (numpy cannot read BF16)."""
import glob, json, os, sys
import torch
from safetensors.torch import load_file


def tensors(directory):
    merged = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        merged.update(load_file(path))
    return merged


cpu_dir, cuda_dir = sys.argv[1], sys.argv[2]
cpu, cuda = tensors(cpu_dir), tensors(cuda_dir)
assert cpu.keys() == cuda.keys(), f"tensor names differ: {sorted(set(cpu) ^ set(cuda))[:10]}"
identical = different = 0
scale_errors = []
for name in sorted(cpu):
    a, b = cpu[name], cuda[name]
    if name.endswith("input_scale") or name.endswith("input_global_scale"):
        scale_errors.append((abs(b.float().item() / a.float().item() - 1), name))
    elif a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(-1).view(torch.uint8),
                                                                   b.contiguous().view(-1).view(torch.uint8)):
        identical += 1
    else:
        different += 1
        print(f"DIFFERENT {name}")
amax_cpu = json.load(open(os.path.join(cpu_dir, "calibration.json")))["activation_amax"]
amax_cuda = json.load(open(os.path.join(cuda_dir, "calibration.json")))["activation_amax"]
amax_errors = sorted(((abs(amax_cuda[k] / amax_cpu[k] - 1), k) for k in amax_cpu), reverse=True)
scale_errors.sort(reverse=True)
print(f"tensors other than input scales: {identical} identical, {different} different")
print(f"input scales: {len(scale_errors)}, {sum(e == 0 for e, _ in scale_errors)} identical, worst relative difference "
      f"{scale_errors[0][0] * 100:.3f}% ({scale_errors[0][1]}), mean {sum(e for e, _ in scale_errors) / len(scale_errors) * 100:.3f}%")
print(f"activation amax: {len(amax_errors)} modules, worst {amax_errors[0][0] * 100:.3f}% ({amax_errors[0][1]}); "
      f"over 1%: {sum(e > 0.01 for e, _ in amax_errors)}")
sys.exit(1 if different else 0)
