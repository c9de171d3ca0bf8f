"""Regenerate the tiny NPU test models under tests/models/ (a one-off, never run by the suite).

Each model is a random-weights Qwen2 (grouped-query attention, like Qwen2.5-1.5B-Instruct) with a
byte-level BPE tokenizer trained here from an inline corpus and a ChatML chat template, saved with
transformers and exported with the production model's exporter and task
(``optimum-cli export openvino --task text-generation-with-past``). The output is the folder
OpenVINO GenAI loads: IR model, OpenVINO tokenizer and detokenizer (the chat template and EOS id
are in the tokenizer's rt_info), config.json and generation_config.json.

It needs torch, transformers and optimum-intel (see requirements-export.txt), which the suite
must never need: run it in a throwaway virtual environment, see README.md. Everything is seeded
and the output is byte-for-byte reproducible with the pinned versions; ``--check`` rebuilds into
a temporary folder and compares with the committed files.

    python tests/models/build_npu_models.py            # rebuild every model and SHA256SUMS
    python tests/models/build_npu_models.py --check    # rebuild elsewhere, compare, change nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "SHA256SUMS"

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML as Qwen2.5 writes it, minus Qwen's default system prompt, so that a prompt is exactly the
# messages npud sends.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split pattern (from its tokenizer.json), so the OpenVINO tokenizer
# converter goes through the same regex split + byte-level path as for the production model.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Files of optimum's output that the committed folder keeps: what OpenVINO GenAI reads. The chat
# template and EOS id travel in the tokenizer IR's rt_info; config.json gives GenAI the BOS id and
# generation_config.json the default GenerationConfig (both are in the production folder too).
# Dropped: openvino_config.json (absolute path of the source folder, only with int4), and
# tokenizer.json, tokenizer_config.json and chat_template.jinja, which GenAI does not read when
# the OpenVINO tokenizer is there (measured: same template, ids and output without them).
KEEP = (
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
    "config.json",
    "generation_config.json",
)


def zen_of_python() -> str:
    # Ships with every CPython (rot13-encoded in the ``this`` module): English text, no download.
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


CORPUS_A = (
    "Summarize the following notification in one sentence.",
    "Write a short title for this conversation.",
    "The meeting was moved to Friday at 10am.",
    "Your package has been delivered.",
    "Remember that the user prefers tea.",
    "0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
)

CORPUS_B = (
    "Staging is down tonight from 22:00 to 23:30 UTC; please do not deploy.",
    "The user is vegetarian and lives in Lyon, France, with two cats called Miso and Tofu.",
    "Migrating Postgres from version 12 to 16 took two evenings and one careful rollback.",
    "Build #4521 failed: test_socket timed out after 300 seconds on runner ci-7.",
    "Lunch with Ana moved to Thursday, 12:30, at the usual place near the station.",
    "Der Zug nach München fährt um 8:15 Uhr ab. ¿Dónde está la estación? Ça va très bien, merci.",
    "Reply in JSON: {\"candidates\": [\"...\"]} with at most five short facts about the user.",
    "\t<tab> and\r\nCRLF lines, emoji \u2713 \u2764 and dashes \u2013 \u2014 survive byte-level BPE.",
    "Your flight LH 1043 to Frankfurt is delayed by 45 minutes; boarding now starts at 17:05 at gate B22.",
    "Invoice 2024-118 for 1,250.00 EUR is due on March 3rd. Pay by bank transfer or card.",
    "Reminder: dentist appointment tomorrow at 9:40. Bring your insurance card and arrive early.",
    "The backup job finished with warnings: 3 files were skipped because they were locked.",
    "Weather alert for Grenoble: heavy snow expected overnight, roads may be closed in the morning.",
    "Pull request #882 was merged into main after two approvals and a green pipeline.",
    "Kernel 6.11 adds the npu_busy_time_us counter for the intel_vpu driver in sysfs.",
    "Grandma's birthday is on the 14th; she would like a photo album rather than flowers.",
    "The quarterly report shows revenue up 7 percent, costs flat, and hiring paused until June.",
    "Bitte schicken Sie mir die Unterlagen bis Freitag. Gracias por tu ayuda con la mudanza.",
    "Disk usage on /var reached 91 percent; the log rotation policy keeps fourteen days of logs.",
    "A new comment on your issue: could you attach the full stack trace and the config file?",
    "The library will be closed on Monday for maintenance; returns can be dropped in the box outside.",
    "Security notice: a new sign-in to your account from Firefox on Linux near Paris.",
    "Train 9576 to London St Pancras departs from platform 3; the bistro coach is number 8.",
    "She prefers short answers, writes in British English, and works on compilers for a living.",
)


@dataclass(frozen=True)
class Spec:
    """One fixture model. Two differ in every dimension so nothing gets tuned to one of them."""

    name: str
    seed: int
    corpus: tuple[str, ...]
    bpe_vocab: int  # tokens the BPE trainer makes (specials included when specials_first)
    specials_first: bool  # ids 0..2 (tiny GGUF style) or appended after BPE (Qwen2.5 style)
    model_vocab: int  # embedding rows; Qwen2.5 pads this past the tokenizer's size
    generation_config: dict[str, object]  # generation_config.json beyond bos/eos/pad
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    tie_embeddings: bool
    init_std: float
    weight_format: tuple[str, ...]  # optimum-cli weight arguments
    layers: int = 2  # 3+ layers on a model this narrow break NPUW's automatic partitioning


SPECS = (
    Spec(
        name="tiny-qwen2-h64",
        seed=0,
        corpus=(zen_of_python(), *CORPUS_A),
        bpe_vocab=512,
        specials_first=True,
        model_vocab=512,
        # The sampling defaults Qwen2.5-Instruct ships (two EOS ids, sampling on): a daemon that
        # starts from get_generation_config() must override them, as it must in production.
        generation_config={
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 20,
            "repetition_penalty": 1.1,
            "eos_token_id": ["<|im_end|>", "<|endoftext|>"],
        },
        hidden=64,
        intermediate=128,
        heads=4,
        kv_heads=2,
        tie_embeddings=True,
        init_std=0.1,
        # int4 symmetric channel-wise: the NPU's recommended int4 layout, and the int4 export
        # NPUW accepts at these widths (grouped int4 trips NPUW's "% 64" and partitioning checks).
        weight_format=("--weight-format", "int4", "--group-size", "-1", "--sym"),
    ),
    Spec(
        name="tiny-qwen2-h96",
        seed=1,
        corpus=CORPUS_B,
        bpe_vocab=700,
        specials_first=False,
        model_vocab=768,
        generation_config={},
        hidden=96,
        intermediate=160,
        heads=6,
        kv_heads=2,
        tie_embeddings=False,
        init_std=0.1,
        weight_format=("--weight-format", "fp16"),
    ),
)


def train_tokenizer(spec: Spec) -> Any:  # a tokenizers.Tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.bpe_vocab,
        special_tokens=list(SPECIAL_TOKENS) if spec.specials_first else [],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Repetition weights the corpus the way the GGUF tiny model's trainer does; the order is fixed.
    tokenizer.train_from_iterator(list(spec.corpus) * 20, trainer)
    if not spec.specials_first:
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    expected = spec.bpe_vocab + (0 if spec.specials_first else len(SPECIAL_TOKENS))
    if tokenizer.get_vocab_size() != expected:
        raise SystemExit(f"{spec.name}: corpus too small, {tokenizer.get_vocab_size()} tokens, want {expected}")
    return tokenizer


def printable(text: str) -> bool:
    return "\ufffd" not in text and all(c in "\n\t" or c.isprintable() for c in text)


def save_source(spec: Spec, out: Path) -> None:
    """Write the transformers checkpoint (weights, config, tokenizer, chat template) to ``out``."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tk = train_tokenizer(spec)
    ids = {t: tk.token_to_id(t) for t in SPECIAL_TOKENS}
    if tk.get_vocab_size() > spec.model_vocab:
        raise SystemExit(f"{spec.name}: tokenizer has {tk.get_vocab_size()} tokens > model_vocab")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    config = Qwen2Config(
        vocab_size=spec.model_vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec.tie_embeddings,
        # Wider than transformers' 0.02 so logits have clearer gaps and fewer near-ties. Greedy
        # text still drifts between the emulated NPU and the CPU plugin after a few tokens
        # (different int4/f16 arithmetic): tests compare a device with itself, never across.
        initializer_range=spec.init_std,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).eval()
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        # Rows past the tokenizer (Qwen-style padding) and tokens that decode to partial UTF-8 or
        # control characters get a small output row, so the junk text the model writes is
        # printable and tests can pick stop strings from it. Nothing is hidden: they stay reachable.
        for index in range(spec.model_vocab):
            if index >= tk.get_vocab_size() or not printable(tk.decode([index], skip_special_tokens=False)):
                head[index] *= 0.1
    generation: dict[str, object] = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **spec.generation_config,
    }
    if isinstance(generation["eos_token_id"], list):
        generation["eos_token_id"] = [ids[t] for t in generation["eos_token_id"]]
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(out)


def export(spec: Spec, src: Path, out: Path) -> None:
    """Run optimum-intel's exporter on ``src`` and keep only the files listed in KEEP."""
    raw = out.parent / (out.name + ".raw")
    shutil.rmtree(raw, ignore_errors=True)
    cli = Path(sys.executable).with_name("optimum-cli")
    cmd = [str(cli), "export", "openvino", "-m", str(src), "--task", "text-generation-with-past"]
    subprocess.run([*cmd, *spec.weight_format, str(raw)], check=True, stdout=subprocess.DEVNULL)
    missing = [name for name in KEEP if not (raw / name).is_file()]
    if missing:
        raise SystemExit(f"optimum output lacks {missing}: has {sorted(p.name for p in raw.iterdir())}")
    out.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        shutil.copyfile(raw / name, out / name)
        (out / name).chmod(0o644)
    shutil.rmtree(raw)


def build(spec: Spec, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-src-") as tmp:
        src = Path(tmp) / "hf"
        save_source(spec, src)
        export(spec, src, dest / spec.name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_lines(root: Path) -> list[str]:
    return [f"{sha256(root / spec.name / name)}  {spec.name}/{name}" for spec in SPECS for name in sorted(KEEP)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare")
    parser.add_argument("--out", type=Path, help="build into this folder instead of tests/models/")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory(prefix="npu-models-") as tmp:
            for spec in SPECS:
                build(spec, Path(tmp))
            fresh = manifest_lines(Path(tmp))
        committed = MANIFEST.read_text().splitlines()
        if fresh != committed:
            for line in sorted(set(fresh) ^ set(committed)):
                print(("fresh     " if line in fresh else "committed ") + line)
            return 1
        print(f"rebuilt models match {MANIFEST.name}")
        return 0
    root = args.out or HERE
    for spec in SPECS:
        shutil.rmtree(root / spec.name, ignore_errors=True)
        build(spec, root)
    lines = manifest_lines(root)
    (root / MANIFEST.name).write_text("\n".join(lines) + "\n")
    sizes = {spec.name: sum((root / spec.name / n).stat().st_size for n in KEEP) for spec in SPECS}
    print(json.dumps(sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
