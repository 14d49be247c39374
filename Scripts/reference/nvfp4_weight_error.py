#!/usr/bin/env python3
"""Per-Linear NVFP4 weight quantization error ||W - Q(W)|| / ||W|| of a BF16 Llama safetensors model (numpy only).

Usage: nvfp4_weight_error.py MODEL_DIR [TOP]
Prints every Linear's relative error, then per layer the error of its whole Linear set and of down_proj, sorted
worst first (to pick `coordctl quantize --exclude` candidates). Follows spec section 3 with the fused q/k/v and
gate/up S2; E4M3 and E2M1 are rounded to nearest (ties are too rare to change a ranking).
"""
import json, os, struct, sys
import numpy as np

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
E4M3 = np.array([(m / 8) * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
                 for e in range(16) for m in range(8)][1:127], dtype=np.float32)  # 0x01..0x7E


def load(directory):
    tensors = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            base = 8 + n
            for key, info in header.items():
                if key == "__metadata__" or info["dtype"] != "BF16":
                    continue
                begin, end = info["data_offsets"]
                f.seek(base + begin)
                raw = np.frombuffer(f.read(end - begin), dtype=np.uint16).astype(np.uint32) << 16
                tensors[key] = raw.view(np.float32).reshape(info["shape"])
    return tensors


def nearest(values, table):
    index = np.clip(np.searchsorted(table, values), 1, len(table) - 1)
    lower, upper = table[index - 1], table[index]
    return np.where(values - lower <= upper - values, lower, upper)


def quantize(w, s2):
    blocks = w.reshape(w.shape[0], -1, 16)
    scale = np.max(np.abs(blocks), axis=2) / np.float32(6 * s2)
    scale = np.where(scale == 0, 1, scale)
    scale = nearest(np.clip(scale, 2.0 ** -9, 448).astype(np.float32), E4M3)
    den = (scale * s2)[..., None]
    q = np.sign(blocks) * nearest(np.minimum(np.abs(blocks / den), 6), E2M1)
    return (q * den).reshape(w.shape)


def main():
    directory, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    t = load(directory)
    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    layers = sorted({int(k.split(".")[2]) for k in t if k.startswith("model.layers.")})
    rows, per_layer = [], []
    for layer in layers:
        err2, norm2 = 0.0, 0.0
        down = 0.0
        for group in groups:
            ws = [t[f"model.layers.{layer}.{k}.weight"] for k in group]
            s2 = np.float32(max(float(np.max(np.abs(w))) for w in ws) / 2688)
            for kind, w in zip(group, ws):
                e = float(np.sum((w - quantize(w, s2)) ** 2))
                n = float(np.sum(w ** 2))
                rows.append((np.sqrt(e / n), f"model.layers.{layer}.{kind}"))
                err2 += e
                norm2 += n
                if kind == "mlp.down_proj":
                    down = np.sqrt(e / n)
        per_layer.append((np.sqrt(err2 / norm2), down, layer))
    for error, name in sorted(rows, reverse=True)[:top]:
        print(f"{error:.4f}  {name}")
    print("\nlayer  all-Linears  down_proj")
    for error, down, layer in sorted(per_layer, reverse=True):
        print(f"{layer:5d}  {error:.4f}       {down:.4f}")


if __name__ == "__main__":
    main()
