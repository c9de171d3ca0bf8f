"""Build a tiny random-weights Qwen2 GGUF model offline, for tests and benchmarks.

The model is useless as a language model (its output is deterministic gibberish), but it goes
through exactly the same OpenVINO GenAI code path as a real one: GGUF reader, byte-level BPE
tokenizer, ChatML chat template, EOS handling. It builds in well under a second with numpy,
``gguf`` and ``tokenizers`` (no torch, no network), so every test session makes its own.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2.5-style ChatML with no default system prompt, so prompts are exactly what npud sends.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
CONTEXT = 2048
VOCAB = 512


def _corpus() -> list[str]:
    # The Zen of Python ships with CPython: a small English corpus that needs no download.
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    zen = codecs.decode(this.s, "rot13")
    extra = [
        "Summarize the following notification in one sentence.",
        "Write a short title for this conversation.",
        "The meeting was moved to Friday at 10am.",
        "Your package has been delivered.",
        "Remember that the user prefers tea.",
        "0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    ]
    return [zen] * 5 + extra * 20


def _train_tokenizer() -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for token, index in model["vocab"].items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def build_tiny_gguf(out: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the tiny Qwen2 model to ``out`` (a .gguf path) and return the path."""
    import gguf
    import numpy as np

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens, merges = _train_tokenizer()
    ids = {t: i for i, t in enumerate(tokens)}
    head_dim = HIDDEN // HEADS
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name("npud-tiny-random-qwen2")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(1)  # F16: the GGUF reader rejects F32 2-D weights
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_eos_token_id(ids["<|im_end|>"])
    writer.add_pad_token_id(ids["<|endoftext|>"])
    writer.add_unk_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, shape: tuple[int, int], scale: float = 0.02) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float16))

    def vector(name: str, size: int, value: float | None = None) -> None:
        data = np.full(size, value, np.float32) if value is not None else (
            rng.standard_normal(size) * 0.02
        ).astype(np.float32)
        writer.add_tensor(name, data)

    kv_dim = KV_HEADS * head_dim
    matrix("token_embd.weight", (len(tokens), HIDDEN), 1.0)
    for layer in range(LAYERS):
        p = f"blk.{layer}."
        vector(p + "attn_norm.weight", HIDDEN, 1.0)
        vector(p + "ffn_norm.weight", HIDDEN, 1.0)
        matrix(p + "attn_q.weight", (HIDDEN, HIDDEN))
        matrix(p + "attn_k.weight", (kv_dim, HIDDEN))
        matrix(p + "attn_v.weight", (kv_dim, HIDDEN))
        vector(p + "attn_q.bias", HIDDEN)
        vector(p + "attn_k.bias", kv_dim)
        vector(p + "attn_v.bias", kv_dim)
        matrix(p + "attn_output.weight", (HIDDEN, HIDDEN))
        matrix(p + "ffn_gate.weight", (FFN, HIDDEN))
        matrix(p + "ffn_up.weight", (FFN, HIDDEN))
        matrix(p + "ffn_down.weight", (HIDDEN, FFN))
    vector("output_norm.weight", HIDDEN, 1.0)
    matrix("output.weight", (len(tokens), HIDDEN), 1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2.gguf"))
