"""Build the offline tokenizer that the replay tests give every load generator.

One token per non-whitespace character (characters outside the vocabulary
count as ``?``), whitespace only separates. So a prompt's token count does not
change when a tool joins pieces with or without a space, strips it, or decodes
and re-encodes it, and the mock server can count exactly what a tool meant to
send. It is saved in the Hugging Face cache layout (``models--<org>--<name>``)
because AIPerf 0.13.0's workers load tokenizers by hub name; with
``HF_HOME`` pointing here and ``HF_HUB_OFFLINE=1`` nothing is downloaded.

Run with the side environment's python (it needs ``tokenizers`` and ``transformers``):
``python build_tokenizer.py HF_HOME``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "servegen-replay/char-tokenizer"
REVISION = "0" * 40
UNKNOWN = "?"
SPECIAL = ["<s>", "</s>", "<pad>"]


def snapshot_dir(hf_home: Path) -> Path:
    org, name = NAME.split("/")
    return hf_home / "hub" / f"models--{org}--{name}" / "snapshots" / REVISION


def build(hf_home: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(0x21, 0x250) if not chr(c).isspace() and chr(c).isprintable()]
    vocab = {token: i for i, token in enumerate([*SPECIAL, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=UNKNOWN
    )
    out = snapshot_dir(hf_home)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    # A minimal config so tools that read the model config (vLLM's bench) find one.
    (out / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "vocab_size": len(vocab), "bos_token_id": 0, "eos_token_id": 1})
    )
    refs = out.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(REVISION)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
