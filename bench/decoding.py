"""Decoding settings judged by the evaluation set: each job's quality measures under several
settings, and how often prompt-lookup decoding changes the text.

usage: python -m bench.decoding [--model smollm2-135m] [--split dev] [--jobs title,summary,notification]
                                [--prompt-lookup] [--compare quality.json] [--json out.json]

Runs in-process on the CPU with a plain ``LLMPipeline``, the jobs' own messages and
post-processing: the variants need settings the daemon does not expose (on purpose). ``current``
is what the job table sets today; ``--compare`` checks that it reproduces the daemon's texts from
a ``bench.quality --json`` file. Not part of the test suite; work on the dev split only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import evalset
from bench.evalset import Item
from bench.quality import _pct, _table, load_items
from npud.jobs import JOBS, JobSpec


@dataclass(frozen=True)
class Variant:
    name: str
    repetition_penalty: float | None = None  # None: the job table's value ("current")
    no_repeat_ngram_size: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    prompt_lookup: bool = False
    num_assistant_tokens: int = 5
    max_ngram_size: int = 3

    def for_job(self, spec: JobSpec) -> Variant:
        if self.repetition_penalty is not None:
            return self
        return replace(self, repetition_penalty=spec.repetition_penalty, no_repeat_ngram_size=spec.no_repeat_ngram_size)


def parse_variant(name: str) -> Variant:
    """``current`` (the job table's settings) or settings joined by ``+``: ``rp1.0`` (repetition
    penalty), ``nr3`` (no_repeat_ngram_size), ``freq0.5``, ``pres0.5`` (frequency and presence
    penalty), ``lookup`` (prompt-lookup decoding, ``la5``/``ng3`` for its assistant tokens and n-gram size)."""
    if name == "current":
        return Variant(name)
    fields: dict[str, Any] = {"name": name, "repetition_penalty": 1.0}
    for part in name.split("+"):
        for prefix, key, kind in (("rp", "repetition_penalty", float), ("nr", "no_repeat_ngram_size", int),
                                  ("freq", "frequency_penalty", float), ("pres", "presence_penalty", float),
                                  ("la", "num_assistant_tokens", int), ("ng", "max_ngram_size", int)):
            if part.startswith(prefix) and part[len(prefix):].replace(".", "", 1).isdigit():
                fields[key] = kind(part[len(prefix):])
                break
        else:
            if part != "lookup":
                raise ValueError(f"unknown setting {part!r} in {name!r}")
            fields["prompt_lookup"] = True
    return Variant(**fields)


DEFAULT_VARIANTS = ("current", "rp1.0", "rp1.0+nr3", "rp1.0+freq0.3", "rp1.0+freq0.6", "rp1.0+freq1.0",
                    "rp1.0+pres0.3", "rp1.0+pres0.6", "rp1.0+pres1.0")
DEFAULT_LOOKUP_VARIANTS = ("rp1.0+lookup", "rp1.0+freq0.6+lookup", "rp1.0+pres0.6+lookup")


class Pipeline:
    def __init__(self, model_path: Path, cache: Path, prompt_lookup: bool) -> None:
        import openvino_genai as og

        extra = {"prompt_lookup": True} if prompt_lookup else {}
        self.pipe = og.LLMPipeline(str(model_path), "CPU", CACHE_DIR=str(cache / "compiled"), **extra)
        self.tokenizer = self.pipe.get_tokenizer()

    def generate(self, spec: JobSpec, text: str, variant: Variant) -> tuple[str, int, float]:
        prompt = self.tokenizer.apply_chat_template(spec.messages(text), add_generation_prompt=True)
        config = self.pipe.get_generation_config()
        config.max_new_tokens = spec.default_max_new_tokens
        config.do_sample = False
        config.apply_chat_template = False
        config.repetition_penalty = variant.repetition_penalty
        if variant.no_repeat_ngram_size:
            config.no_repeat_ngram_size = variant.no_repeat_ngram_size
        config.frequency_penalty = variant.frequency_penalty
        config.presence_penalty = variant.presence_penalty
        if variant.prompt_lookup:
            config.num_assistant_tokens = variant.num_assistant_tokens
            config.max_ngram_size = variant.max_ngram_size
        started = time.perf_counter()
        result = self.pipe.generate([prompt], config)
        elapsed = (time.perf_counter() - started) * 1000
        return result.texts[0], int(result.perf_metrics.get_num_generated_tokens()), elapsed


def run_variant(pipeline: Pipeline, items: Sequence[Item], variant: Variant) -> list[dict[str, Any]]:
    records = []
    for item in items:
        spec = JOBS[item.job]
        settings = variant.for_job(spec)
        raw, tokens, ms = pipeline.generate(spec, item.input, settings)
        output = spec.postprocess(raw)
        # The daemon answers an empty output with GenerationFailed; count it the same way.
        error = "GenerationFailed" if output.is_empty else None
        record = evalset.score(item, None if error else output.text, output.candidates, error)
        record.update(variant=variant.name, ms=round(ms, 1), generated_tokens=tokens, settings=asdict(settings))
        records.append(record)
        print(f"\r{variant.name:<22} {item.id:<18}", end="", file=sys.stderr, flush=True)
    return records


def differs(records: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> int:
    """How many outputs differ from the same item's output in ``reference``."""
    by_id = {r["id"]: r["output"] for r in reference}
    return sum(r["output"] != by_id.get(r["id"]) for r in records)


def report(results: dict[str, list[dict[str, Any]]], reference_for: dict[str, str]) -> str:
    rows = []
    for job in evalset.JOBS:
        for name, records in results.items():
            mine = [r for r in records if r["job"] == job]
            if not mine:
                continue
            agg = evalset.aggregate(mine)
            reference = reference_for.get(name)
            if reference not in results:
                reference = None
            changed = (f"{differs(mine, [r for r in results[reference] if r['job'] == job])}/{len(mine)} vs {reference}"
                       if reference else "")
            rows.append([job, name, agg["n"], _pct(agg["well_formed"]), _pct(agg["key_facts"]), _pct(agg["all_kept"]),
                         _pct(agg["invented_rate"]), f"{statistics.median(r['ms'] for r in mine):.0f}",
                         f"{statistics.mean(r['generated_tokens'] for r in mine):.1f}", changed])
    return _table(["job", "settings", "n", "well-formed", "key facts kept", "all kept", "invented numbers",
                   "median ms", "mean tokens", "texts differ"], rows)


def compare_with_daemon(records: Sequence[dict[str, Any]], path: Path) -> str:
    daemon = {r["id"]: r["output"] for r in json.loads(path.read_text())["items"]}
    shared = [r for r in records if r["id"] in daemon]
    same = sum(r["output"] == daemon[r["id"]] for r in shared)
    return f"'current' in-process reproduces the daemon's text for {same}/{len(shared)} items"


def main(argv: Sequence[str] | None = None) -> int:
    from npud.config import Config
    from npud.engine import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--split", choices=("dev", "heldout", "all"), default="dev")
    parser.add_argument("--jobs", default="title,summary,notification")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=parse_variant.__doc__)
    parser.add_argument("--prompt-lookup", action="store_true",
                        help=f"also run {', '.join(DEFAULT_LOOKUP_VARIANTS)}")
    parser.add_argument("--compare", type=Path, help="a bench.quality --json file of the same model")
    parser.add_argument("--json", help="write every variant's per-item records here")
    args = parser.parse_args(argv)

    cache = Path(os.environ.get("NPUD_BENCH_CACHE") or Path.home() / ".cache" / "npud")
    model_path = resolve_model_path(Config(model=args.model, cache_dir=str(cache), lock_file=str(cache / "bench.lock")))
    items = load_items(args.jobs.split(","), args.split, args.limit, evalset.EVAL_DIR)
    variants = [parse_variant(name) for name in args.variants.split(",")]
    if args.prompt_lookup:
        variants += [parse_variant(name) for name in DEFAULT_LOOKUP_VARIANTS]
    results: dict[str, list[dict[str, Any]]] = {}
    reference_for: dict[str, str] = {}
    # One pipeline at a time: two SmolLM2 pipelines would only compete for the same two cores.
    for lookup in (False, True):
        chosen = [v for v in variants if v.prompt_lookup is lookup]
        if not chosen:
            continue
        pipeline = Pipeline(model_path, cache, prompt_lookup=lookup)
        for variant in chosen:
            results[variant.name] = run_variant(pipeline, items, variant)
            if lookup:
                reference_for[variant.name] = variant.name.replace("+lookup", "")
        del pipeline
    print(file=sys.stderr)
    print(f"decoding study: {args.model} on CPU (in-process), split {args.split}, {len(items)} items per variant")
    print(report(results, reference_for))
    if args.compare and "current" in results:
        print(compare_with_daemon(results["current"], args.compare))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
