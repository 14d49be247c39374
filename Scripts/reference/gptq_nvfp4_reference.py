#!/usr/bin/env python3
"""GPTQ for NVFP4 weights (E2M1 codes, fixed FP8-E4M3 block scales per 16 inputs, F32 weight_scale_2) in plain numpy,
and the fixture the Swift `GPTQ` module is tested against.

    gptq_nvfp4_reference.py [OUTPUT]   (default Tests/Fixtures/gptq-nvfp4-reference.safetensors)

Written from the algorithm (Frantar et al., "GPTQ", 2022, with the block scales of the NVFP4 tensor_group strategy
fixed up front from the original weights) and nvfp4-checkpoint-spec.md sections 1-3, not from the Swift code:
- rounding is written as "nearest grid point, ties to the even code", searched over the whole grid, rather than as
  the spec's threshold list;
- all linear algebra (Hessian, Cholesky, inverse, error propagation) is float64; only the NVFP4 rounding itself is
  float32, in the spec's order (y = w / (sf * S2), dequantized as value * (sf * S2)).

The fixture holds, from a fixed seed: `weight` (F16 [64, 256]; F16 keeps the file small and widens exactly), `inputs`
(F16 [448, 256] calibration rows, correlated, with per-channel magnitudes spread like LLM activations and one input
channel that is always zero), `weight_scale_2` (F32), and for each column order ORDER in {natural_order,
activation_order}: `ORDER.weight_packed` (U8 [64, 128], element 2k in the low nibble) and `ORDER.weight_scale` (U8
[64, 16], E4M3 codes). The GPTQ parameters are in the metadata. Rerunning reproduces the tensor bytes exactly; only
the order of the metadata keys in the header may change (the safetensors package keeps them in a hash map).
"""
import sys

import numpy as np
from safetensors.numpy import save_file

SEED = 20261206
ROWS, COLS, SAMPLES = 64, 256, 448
DEAD_INPUT = 37
BLOCK_SIZE = 128
DAMPENING = 0.01
MAX_DAMPENING_RETRIES = 3

# E2M1 magnitudes by code (the code's low 3 bits); the sign is bit 3.
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def e4m3_values():
    """Value of every positive finite E4M3 code 0x00..0x7E, from the format definition (bias 7, subnormals at e=0)."""
    values = []
    for code in range(0x7F):
        exponent, mantissa = code >> 3, code & 7
        if exponent == 0:
            values.append(mantissa / 8 * 2.0 ** -6)
        else:
            values.append((1 + mantissa / 8) * 2.0 ** (exponent - 7))
    return np.array(values, dtype=np.float64)


E4M3_VALUES = e4m3_values()


def nearest_code(magnitudes, grid):
    """Index of the grid point nearest each magnitude; on an exact tie, the even index (even mantissa bit).

    Distances are computed in float64 from float32 inputs and dyadic grid points, so they are exact and ties are
    detected exactly. Beyond the last point the last point is nearest (saturation)."""
    a = np.asarray(magnitudes, dtype=np.float64)[..., None]
    distance = np.abs(a - grid)
    best = distance.min(axis=-1, keepdims=True)
    tied = distance == best
    index = np.arange(len(grid))
    # Prefer an even index among the tied ones, then the smallest.
    preference = np.where(tied, np.where(index % 2 == 0, index, index + len(grid)), 4 * len(grid))
    return preference.argmin(axis=-1)


def e2m1_encode(y):
    """E2M1 codes of float32 values: nearest magnitude, sign bit iff y < 0 (so -0.0 gives 0x0)."""
    codes = nearest_code(np.abs(y), E2M1_VALUES).astype(np.uint8)
    return np.where(y < 0, codes | 8, codes).astype(np.uint8)


def e2m1_value(codes):
    magnitude = E2M1_VALUES[codes & 7]
    return np.where(codes & 8, -magnitude, magnitude).astype(np.float32)


def block_scale_codes(weight, s2):
    """E4M3 code of every 16-element block of each row (spec section 3 step 4), from the original weights."""
    d = np.float32(np.float32(6) * s2)
    block_amax = np.abs(weight).reshape(weight.shape[0], -1, 16).max(axis=2).astype(np.float32)
    s = (block_amax / d).astype(np.float32)
    s = np.where(s == 0, np.float32(1), s)
    s = np.clip(s, np.float32(2.0 ** -9), np.float32(448)).astype(np.float32)
    return nearest_code(s, E4M3_VALUES).astype(np.uint8)


def hessian(inputs):
    """H = 2/n * X^T X over the n calibration rows, in float64."""
    x = inputs.astype(np.float64)
    return 2.0 / x.shape[0] * (x.T @ x)


def upper_cholesky_of_inverse(h, dampening):
    """U with H_damped^-1 = U^T U, retrying with 10x the dampening when H_damped is not positive definite."""
    for attempt in range(MAX_DAMPENING_RETRIES + 1):
        damped = h + dampening * 10 ** attempt * np.mean(np.diag(h)) * np.eye(h.shape[0])
        try:
            lower = np.linalg.cholesky(damped)
        except np.linalg.LinAlgError:
            continue
        lower_inverse = np.linalg.inv(lower)
        inverse = lower_inverse.T @ lower_inverse
        return np.linalg.cholesky(inverse).T
    raise np.linalg.LinAlgError("Hessian is not positive definite even with the largest dampening")


def gptq(weight, h, s2, activation_order):
    """E2M1 codes [rows, cols] and E4M3 block scale codes [rows, cols/16] of the weight under GPTQ."""
    rows, cols = weight.shape
    scale_codes = block_scale_codes(weight, s2)
    # The divisor sf * S2 of every element, by original column: fixed for the whole run.
    divisor = np.repeat((E4M3_VALUES[scale_codes].astype(np.float32) * s2).astype(np.float32), 16, axis=1)

    w = weight.astype(np.float64)
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0

    order = np.argsort(-np.diag(h), kind="stable") if activation_order else np.arange(cols)
    w, h, divisor = w[:, order], h[np.ix_(order, order)], divisor[:, order]
    u = upper_cholesky_of_inverse(h, DAMPENING)

    codes = np.zeros((rows, cols), dtype=np.uint8)
    for start in range(0, cols, BLOCK_SIZE):
        end = min(start + BLOCK_SIZE, cols)
        errors = np.zeros((rows, end - start))
        for j in range(start, end):
            column = w[:, j].astype(np.float32)
            code = e2m1_encode((column / divisor[:, j]).astype(np.float32))
            quantized = (e2m1_value(code) * divisor[:, j]).astype(np.float32).astype(np.float64)
            codes[:, j] = code
            error = (w[:, j] - quantized) / u[j, j]
            # Spread the error over the not yet quantized columns of this block at once...
            w[:, j + 1:end] -= np.outer(error, u[j, j + 1:end])
            errors[:, j - start] = error
        # ...and over the later blocks in one product.
        w[:, end:] -= errors @ u[start:end, end:]

    unpermuted = np.zeros_like(codes)
    unpermuted[:, order] = codes
    return unpermuted, scale_codes


def rtn_codes(weight, s2):
    scale_codes = block_scale_codes(weight, s2)
    divisor = np.repeat((E4M3_VALUES[scale_codes].astype(np.float32) * s2).astype(np.float32), 16, axis=1)
    return e2m1_encode((weight / divisor).astype(np.float32))


def dequantize(codes, scale_codes, s2):
    divisor = np.repeat((E4M3_VALUES[scale_codes].astype(np.float32) * s2).astype(np.float32), 16, axis=1)
    return (e2m1_value(codes) * divisor).astype(np.float32)


def output_error(weight, quantized, h):
    """tr((W - Q) H (W - Q)^T): the expected squared output error over the calibration rows, times 2."""
    delta = weight.astype(np.float64) - quantized.astype(np.float64)
    return float(np.trace(delta @ h @ delta.T))


def pack(codes):
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def make_case():
    rng = np.random.default_rng(SEED)
    # Correlated inputs: a 24-dimensional latent signal mixed into every channel, plus channel noise, with
    # log-normal channel magnitudes (a few loud channels, as in LLM activations).
    latent = rng.standard_normal((SAMPLES, 24)) @ rng.standard_normal((24, COLS))
    x = (latent + 0.5 * rng.standard_normal((SAMPLES, COLS))) * np.exp(rng.normal(0, 0.75, COLS))
    x[:, DEAD_INPUT] = 0
    inputs = x.astype(np.float16)
    w = 0.02 * rng.standard_normal((ROWS, COLS))
    outliers = rng.random((ROWS, COLS)) < 0.01
    w[outliers] *= 8
    weight = w.astype(np.float16)
    return weight, inputs


def main():
    output = sys.argv[1] if len(sys.argv) > 1 else "Tests/Fixtures/gptq-nvfp4-reference.safetensors"
    weight16, inputs16 = make_case()
    weight = weight16.astype(np.float32)
    h = hessian(inputs16)
    # Activation order must not hinge on rounding: the closest two diagonal entries differ by far more than any
    # summation order could change them.
    diagonal = np.sort(np.diag(h))
    gaps = np.diff(diagonal) / diagonal[1:]
    assert gaps[diagonal[1:] > 0].min() > 1e-9, "near-tie in diag(H); pick another seed"

    amax = np.float32(np.abs(weight).max())
    s2 = np.float32(amax / np.float32(2688))
    tensors = {"weight": weight16, "inputs": inputs16, "weight_scale_2": np.array(s2, dtype=np.float32)}
    rtn = dequantize(rtn_codes(weight, s2), block_scale_codes(weight, s2), s2)
    report = [f"RTN output error {output_error(weight, rtn, h):.6e}"]
    for name, activation_order in (("natural_order", False), ("activation_order", True)):
        codes, scale_codes = gptq(weight, h, s2, activation_order)
        tensors[f"{name}.weight_packed"] = pack(codes)
        tensors[f"{name}.weight_scale"] = scale_codes
        error = output_error(weight, dequantize(codes, scale_codes, s2), h)
        changed = float(np.mean(codes != rtn_codes(weight, s2)))
        report.append(f"GPTQ {name}: output error {error:.6e}, codes differing from RTN {changed:.2%}")
    metadata = {
        "generator": "Scripts/reference/gptq_nvfp4_reference.py",
        "numpy": np.__version__,
        "seed": str(SEED),
        "block_size": str(BLOCK_SIZE),
        "dampening": str(DAMPENING),
        "dampening_retries": f"{MAX_DAMPENING_RETRIES} (x10 each)",
        "dead_input_column": str(DEAD_INPUT),
        "hessian": "2/n X^T X over `inputs` (float64)",
        "activation_order": "natural_order: false; activation_order: true (descending diag(H), stable)",
    }
    save_file(tensors, output, metadata=metadata)
    print("\n".join(report))


if __name__ == "__main__":
    main()
