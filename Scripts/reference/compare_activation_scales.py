#!/usr/bin/env python3
"""Compares the activation scales in our calibration.json with modelopt's input_scale values from a digest written
by modelopt_reference.py. Prints a per-Linear table summary: median, 90th percentile and max relative difference.

usage: compare_activation_scales.py CALIBRATION_JSON MODELOPT_DIGEST_JSON [--limit 0.035]
"""
import json, statistics, sys


def main():
    ours = json.load(open(sys.argv[1]))["input_scale"]
    digest = json.load(open(sys.argv[2]))["tensors"]
    limit = float(sys.argv[sys.argv.index("--limit") + 1]) if "--limit" in sys.argv else 0.035
    rows = []
    for name, entry in digest.items():
        if not name.endswith(".input_scale"):
            continue
        module = name[: -len(".input_scale")]
        reference = entry["value"]
        rows.append((abs(ours[module] - reference) / reference, module, ours[module], reference))
    rows.sort()
    diffs = [r[0] for r in rows]
    p90 = diffs[int(0.9 * (len(diffs) - 1))]
    print(f"{len(rows)} Linears compared: median {statistics.median(diffs) * 100:.3f}%, "
          f"90th percentile {p90 * 100:.3f}%, max {diffs[-1] * 100:.3f}% ({rows[-1][1]})")
    print("largest five:")
    for diff, module, mine, reference in rows[-5:]:
        print(f"  {module}: ours {mine:.6g}, modelopt {reference:.6g}, {diff * 100:.3f}%")
    exact = sum(1 for d in diffs if d == 0)
    print(f"bitwise equal: {exact}/{len(rows)}")
    ok = diffs[-1] <= limit and statistics.median(diffs) < 0.005
    print("PASS" if ok else "FAIL", f"(every Linear within {limit * 100:.1f}%, median under 0.5%)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
