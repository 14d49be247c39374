#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (Fuzz/Corpus/<Target>/): small valid inputs each target starts from.

Run from the repository root: python3 Fuzz/Corpus/make_seeds.py. The files are committed; CI's smoke run
(Scripts/fuzz.sh --smoke) replays them and a fixed number of mutations of them.
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# Frames: selector byte (admission state in bits 0-1, small limits in bit 2), then the wire bytes.
def frame(ftype, payload=b"", flags=0, correlation=7):
    return struct.pack(">IHBBQI", 0x4E564643, 1, ftype, flags, correlation, len(payload)) + payload


hello_payload = bytes([2, 8]) + b"worker-1" + bytes(range(32)) + bytes([1])
write("FrameDecoder", "hello", b"\x01" + frame(0x01, hello_payload))
write("FrameDecoder", "request-ping", b"\x02" + frame(0x10, b"\x01abc") + frame(0x20))
write("FrameDecoder", "bulk-chunks", b"\x03" + frame(0x30, bytes(16), flags=1) + frame(0x30, bytes(8), flags=2))
write("FrameDecoder", "small-limits", b"\x04" + frame(0x11, b"x" * 70))
write("FrameDecoder", "partial", b"\x00" + frame(0x13, b"message")[:25])

# Greetings: selector byte (index into FrameType.allCases: 0 HELLO, 1 CHALLENGE), then the payload.
write("Handshake", "hello-bulk", b"\x00" + hello_payload)
write("Handshake", "hello-no-purpose", b"\x00" + hello_payload[:-1])
write("Handshake", "challenge", b"\x01" + bytes([1, 5]) + b"coord" + bytes(32))


# Binary coder nodes (little-endian): 0 nil, 1 value, 2 keyed, 3 unkeyed.
def value(b):
    return b"\x01" + struct.pack("<I", len(b)) + b


def keyed(pairs):
    out = b"\x02" + struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<I", len(k)) + k.encode() + v
    return out


def unkeyed(items):
    return b"\x03" + struct.pack("<I", len(items)) + b"".join(items)


i64 = lambda n: value(struct.pack("<q", n))
sample = keyed([
    ("flag", value(b"\x01")), ("small", value(b"\xff")), ("half", value(struct.pack("<H", 513))),
    ("word", value(struct.pack("<i", -5))), ("int", i64(42)), ("uint", value(struct.pack("<Q", 7))),
    ("float", value(struct.pack("<f", 1.5))), ("double", value(struct.pack("<d", -2.25))),
    ("text", value("héllo".encode())), ("bytes", value(b"\x00\x01\x02")), ("data", value(b"abc")),
    ("optional", b"\x00"), ("list", unkeyed([value(b"a"), value(b"bc")])),
    ("map", keyed([("k", value(struct.pack("<Q", 9)))])),
    ("intKeys", keyed([("3", value(b"three"))])),
    ("choice", keyed([("two", keyed([("a", value(b"x")), ("b", unkeyed([value(struct.pack("<d", 0.5))]))]))])),
])
write("BinaryCoder", "sample", sample)
write("BinaryCoder", "choice-one", keyed([("one", keyed([("_0", i64(5))]))]))
write("BinaryCoder", "strings", unkeyed([value(b"a"), value(b"bc"), value(b"")]))
write("BinaryCoder", "double", value(struct.pack("<d", 3.0)))


def envelope(recipient, target, substitutions, arguments):
    out = b"\x01"
    for s in (recipient, target):
        out += struct.pack("<I", len(s)) + s
    out += struct.pack("<I", len(substitutions)) + b"".join(struct.pack("<I", len(s)) + s for s in substitutions)
    out += struct.pack("<I", len(arguments)) + b"".join(struct.pack("<I", len(a)) + a for a in arguments)
    return out


write("CallEnvelope", "two-arguments", envelope(b"coordinator", b"$s11Coordinator6submit", [], [value(b"job"), unkeyed([i64(1)])]))
write("CallEnvelope", "substitution", envelope(b"worker-1", b"$s6Worker4ping", [b"17ActorSystem07ClusteraB0C"], []))


def safetensors(header, data_size, pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data_size)


write("SafeTensorsHeader", "two-tensors", safetensors({
    "__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
}, 22))
write("SafeTensorsHeader", "empty-and-gap", safetensors({
    "e": {"dtype": "I64", "shape": [0], "data_offsets": [4, 4]},
    "u": {"dtype": "U8", "shape": [1, 2], "data_offsets": [6, 8]},
    "f8": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [8, 12]},
}, 12, pad=False))
write("SafeTensorsHeader", "empty-header", safetensors({}, 0))

write("StrictJSON", "object", '{"a":[1,-2.5e3,"x\\u00e9\\ud83d\\ude00",true,false,null,{"b":{}}],"a":[]}')
write("StrictJSON", "lone-surrogate", '["\\ud800", "\\t\\n\\"\\\\\\/"]')
write("StrictJSON", "number", " 123456789012345678901234567890 ")

# A byte-level BPE tokenizer.json with a 14-token vocabulary, merges, added tokens and a BOS template.
vocab = {t: i for i, t in enumerate(["a", "b", "c", "Ġ", "h", "e", "l", "o", "ab", "Ġa", "he", "ll", "hell", "hello"])}
tokenizer = {
    "version": "1.0",
    "added_tokens": [{"id": 14, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [14], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": vocab, "merges": ["a b", "Ġ a", "h e", "l l", "he ll", "hell o"]},
}
write("TokenizerJSON", "byte-level-bpe", json.dumps(tokenizer))
tokenizer2 = dict(tokenizer, pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                  post_processor=None)
tokenizer2["model"] = dict(tokenizer["model"], merges=[["a", "b"], ["Ġ", "a"]])
write("TokenizerJSON", "array-merges", json.dumps(tokenizer2))

write("CalibrationLine", "ids-and-text", '{"text": "Hello", "input_ids": [1, 2, 999]}\n\n{"text": "caf\\u00e9 \\ud83d\\ude00"}\r\n')
write("CalibrationLine", "bom-ids", "\ufeff" + '{"input_ids": []}\n  \n{"input_ids":[0,0,0],"other":{"x":[1.5e2,null]}}')

# Inputs that crashed the loader (now refused; Tests/TokenizerTests/FuzzRegressionTests.swift): replayed by the smoke.
crash = json.loads(json.dumps(tokenizer2))
crash["added_tokens"][0]["id"] = 2**63 - 1
write("TokenizerJSON", "regression-added-id-int-max", json.dumps(crash))
crash = json.loads(json.dumps(tokenizer))
crash["post_processor"]["special_tokens"]["<s>"]["ids"] = [99]
write("TokenizerJSON", "regression-template-id-outside-vocabulary", json.dumps(crash))
