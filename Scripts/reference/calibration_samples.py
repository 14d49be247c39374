"""The calibration samples `coordctl quantize` chooses, for the reference scripts: records in file order, those under
min_tokens skipped, longer ones cut to max_tokens, the first `samples` kept."""
import json


def select_samples(path, tokenizer, samples, min_tokens, max_tokens):
    chosen = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            ids = record["input_ids"] if "input_ids" in record else tokenizer(record["text"])["input_ids"]
            if len(ids) < min_tokens:
                continue
            chosen.append(ids[:max_tokens])
            if len(chosen) == samples:
                break
    return chosen
