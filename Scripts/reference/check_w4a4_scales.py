#!/usr/bin/env python3
"""check_w4a4_scales.py CHECKPOINT REFERENCE [REFERENCE2 ...] — judges a written W4A4 NVFP4 checkpoint (either layout)
on its bytes, with nothing but the Python standard library:

1. every stored activation scale is exactly f32(amax / 2688) of the activation_amax in the checkpoint's
   calibration.json (compressed-tensors: f32(1 / f32(amax / 2688)));
2. against each REFERENCE (a modelopt export directory, a modelopt digest JSON from modelopt_reference.py, or another
   of our checkpoints): relative differences of the input scales, median / 90th percentile / worst, judged by the
   project's bound for two BF16 forwards (median <= 0.5%, 90th percentile <= 1%, worst <= 5%).

Prints one line per check and exits 1 if any fails."""
import json, os, struct, sys


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def tensors(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        data = open(os.path.join(directory, name), "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            out[key] = (info["dtype"], data[8 + n + begin:8 + n + end])
    return out


def input_scales(path):
    """Linear -> Sx (modelopt's input_scale terms), and the stored f32 values with their layout."""
    if path.endswith(".json"):
        digest = json.load(open(path))["tensors"]
        sx = {k[:-len(".input_scale")]: v["value"] for k, v in digest.items() if k.endswith(".input_scale")}
        return sx, None, "modelopt digest"
    stored, layout = {}, None
    for key, (dtype, raw) in tensors(path).items():
        for suffix, kind in ((".input_global_scale", "compressed-tensors"), (".input_scale", "modelopt")):
            if key.endswith(suffix):
                assert dtype == "F32" and len(raw) == 4, f"{key}: {dtype}, {len(raw)} bytes"
                stored[key[:-len(suffix)]] = struct.unpack("<f", raw)[0]
                layout = kind
    if not stored:
        raise SystemExit(f"{path}: no activation scales (not a W4A4 checkpoint)")
    sx = {k: (1 / v if layout == "compressed-tensors" else v) for k, v in stored.items()}
    return sx, stored, layout


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    checkpoint, references = sys.argv[1], sys.argv[2:]
    ours, stored, layout = input_scales(checkpoint)
    failed = False
    record = json.load(open(os.path.join(checkpoint, "calibration.json")))["activation_amax"]
    wrong = []
    for module, value in sorted(stored.items()):
        amax = record.get(module)
        if amax is None:
            wrong.append(f"{module}: no amax in calibration.json")
            continue
        sx = f32(f32(amax) / 2688)
        expected = f32(1 / sx) if layout == "compressed-tensors" else sx
        if struct.pack("<f", value) != struct.pack("<f", expected):
            wrong.append(f"{module}: stored {value!r}, amax {amax!r} gives {expected!r}")
    print(f"{checkpoint} ({layout}, {len(stored)} Linears): stored scales vs calibration.json: "
          + ("all exact" if not wrong else f"{len(wrong)} wrong, e.g. {wrong[0]}"))
    failed |= bool(wrong)
    for reference in references:
        theirs, _, kind = input_scales(reference)
        common = sorted(set(ours) & set(theirs))
        diffs = sorted((abs(ours[m] - theirs[m]) / abs(theirs[m]), m) for m in common)
        if not diffs:
            print(f"  vs {reference}: no common Linears")
            failed = True
            continue
        pick = lambda q: diffs[min(len(diffs) - 1, int(round((len(diffs) - 1) * q)))][0]
        median, p90, (worst, where) = pick(0.5), pick(0.9), diffs[-1]
        ok = median <= 0.005 and p90 <= 0.01 and worst <= 0.05 and len(common) == len(ours) == len(theirs)
        identical = sum(1 for d, _ in diffs if d == 0)
        print(f"  vs {reference} ({kind}): {len(common)} Linears, {identical} identical, median {median * 100:.3f}%, "
              f"90th percentile {p90 * 100:.3f}%, worst {worst * 100:.3f}% ({where}), above 1%: "
              f"{sum(1 for d, _ in diffs if d > 0.01)} -> {'within BF16 noise' if ok else 'OUTSIDE the bound'}")
        failed |= not ok
    sys.exit(1 if failed else 0)


main()
