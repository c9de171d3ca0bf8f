"""Which decoding options hold on the NPU pipeline: one test per row of the table in CONTRACT.md
("Decoding on the NPU pipeline"), on the real NPU pipeline computing on the CPU (--npu-emulation),
for both committed models. Each option is applied on top of npud's own generation config.

Random weights make junk text, so the checks are about tokens and finish reasons: an option is
*effective* when it changes what the pipeline produces the way it should, *accepted* when the
pipeline takes it without error, *refused* when the pipeline raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from npud import engine
from npud.engine import DecodeSettings, OpenVinoEngine
from npud.jobs import JOBS

from .emulated import (
    LONGER_PROMPTS,
    MODELS,
    SHORT_INPUT,
    Prompts,
    Recorder,
    RecordingPipeline,
    emulated_config,
    model_dir,
    npu_cache,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.realmodel

TOKENS = 32
TEXT = "Summarize: the meeting was moved to Friday at 10am, the meeting was moved, Friday at 10am."


@dataclass
class Out:
    ids: list[int]
    text: str
    finish: str
    generated: int
    infer_calls: int


class Ids:
    """A token-level streamer that keeps the ids (the engine's own streamer type: StreamerBase)."""

    def __new__(cls) -> Any:
        import openvino_genai as og

        class Recording(og.StreamerBase):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.ids: list[int] = []

            def write(self, token: Any) -> Any:
                self.ids.extend(token if isinstance(token, list) else [token])
                return og.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        return Recording()


@dataclass
class Npu:
    model: str
    engine: OpenVinoEngine
    pipeline: RecordingPipeline
    prompt: str
    props: dict[str, Any]

    def config(self, tokens: int = TOKENS, all_tokens: bool = True, **fields: Any) -> Any:
        """npud's generation config for the summary job, then ``fields`` on top."""
        import openvino_genai as og

        settings = DecodeSettings(tokens, repetition_penalty=1.0)
        config = engine.generation_config(og, self.pipeline.get_generation_config(), settings)
        config.ignore_eos = all_tokens  # the random model may stop at once otherwise
        for name, value in fields.items():
            setattr(config, name, value)
        return config

    def run(self, config: Any, pipeline: Any = None, prompt: str | None = None) -> Out:
        streamer = Ids()
        result = (pipeline or self.pipeline).generate([prompt or self.prompt], config, streamer)
        return Out(streamer.ids, result.texts[0], result.finish_reasons[0].name,
                   int(result.perf_metrics.get_num_generated_tokens()),
                   len(result.perf_metrics.raw_metrics.token_infer_durations))


@pytest.fixture(scope="module", params=MODELS)
def npu(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, npu_cache: Path) -> Iterator[Npu]:
    model = request.param
    tmp = tmp_path_factory.mktemp(f"decoding-{model}")
    # Room for TEXT, and for a prompt that repeats a continuation (prompt lookup).
    config = emulated_config(tmp, model, None, Prompts(model).budget() + LONGER_PROMPTS, cache_dir=str(npu_cache))
    recorder = Recorder()
    loaded = recorder.loader().load(config)
    assert isinstance(loaded, OpenVinoEngine)
    prompt, _ = loaded.render_prompt(JOBS["summary"].messages(TEXT))
    props = {k: v for k, v in recorder.constructed[-1].items() if k not in ("model_path", "device")}
    yield Npu(model, loaded, recorder.pipelines[-1], prompt, props)


def repeated(ids: list[int], n: int) -> int:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def test_every_job_of_the_table_runs_with_its_own_settings(npu: Npu) -> None:
    for spec in JOBS.values():
        prompt, _ = npu.engine.render_prompt(spec.messages(SHORT_INPUT))
        generation = npu.engine.generate(prompt, DecodeSettings.for_job(spec, 8), lambda: False)
        assert generation.finish_reason in ("stop", "length") and generation.generated_tokens <= 8
        if spec.json_schema:  # memory_candidate's structured output holds on the NPU pipeline
            assert generation.text.lstrip().startswith("["), generation.text


def test_greedy_is_deterministic_and_max_new_tokens_holds(npu: Npu) -> None:
    first, second = npu.run(npu.config()), npu.run(npu.config())
    assert first.ids == second.ids and (first.finish, first.generated) == ("LENGTH", TOKENS)
    short = npu.run(npu.config(tokens=7))
    assert (short.finish, short.generated) == ("LENGTH", 7) and short.ids == first.ids[:7]


def test_repetition_penalty_is_effective(npu: Npu) -> None:
    plain = npu.run(npu.config())
    penalised = npu.run(npu.config(repetition_penalty=1.5))
    assert penalised.ids != plain.ids
    assert repeated(penalised.ids, 1) < repeated(plain.ids, 1)


def test_no_repeat_ngram_size_is_accepted_without_effect(npu: Npu) -> None:
    """OpenVINO GenAI applies no_repeat_ngram_size in beam search only: greedy output keeps its
    repeated n-grams (the plain output has some, so a working option would have changed it)."""
    plain = npu.run(npu.config())
    assert repeated(plain.ids, 2) > 0
    for size in (2, 3):
        assert npu.run(npu.config(no_repeat_ngram_size=size)).ids == plain.ids


def test_frequency_and_presence_penalties_are_effective(npu: Npu) -> None:
    plain = npu.run(npu.config())
    for name in ("frequency_penalty", "presence_penalty"):
        assert npu.run(npu.config(**{name: 1.5})).ids != plain.ids, name


def test_stop_strings_are_effective(npu: Npu) -> None:
    plain = npu.run(npu.config())
    stop = next(plain.text[i:i + 3] for i in range(8, len(plain.text) - 3) if plain.text[i:i + 3].strip())
    stopped = npu.run(npu.config(stop_strings={stop}))
    # Generation ends with the token that completes the first occurrence; the text drops that
    # token, which can leave the start of the stop string in it (measured, not assumed).
    assert stopped.finish == "STOP" and stopped.generated < TOKENS
    assert plain.text.startswith(stopped.text) and stop not in stopped.text
    assert plain.text.find(stop) <= len(stopped.text) < plain.text.find(stop) + len(stop)


def test_end_of_sequence_ids_min_new_tokens_and_ignore_eos_are_effective(npu: Npu) -> None:
    plain = npu.run(npu.config())
    token = plain.ids[5]
    first = plain.ids.index(token)
    as_eos = {"eos_token_id": token, "stop_token_ids": {token}}
    stopped = npu.run(npu.config(all_tokens=False, **as_eos))
    assert (stopped.finish, stopped.generated) == ("STOP", first + 1)
    assert npu.run(npu.config(all_tokens=True, **as_eos)).generated == TOKENS  # ignore_eos
    at_least = npu.run(npu.config(all_tokens=False, min_new_tokens=first + 4, **as_eos))
    assert at_least.generated >= first + 4


def test_multinomial_sampling_is_effective(npu: Npu) -> None:
    sample = {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
    one, again = npu.run(npu.config(rng_seed=1, **sample)), npu.run(npu.config(rng_seed=1, **sample))
    other = npu.run(npu.config(rng_seed=2, **sample))
    assert one.ids == again.ids and one.ids != other.ids


def test_structured_output_is_enforced(npu: Npu) -> None:
    """Both halves, each on a whole document. JSON allows white space between an object's tokens,
    and the random test models fill an object with it up to the token limit (finish LENGTH): a
    schema whose document is an object would be checked only as a prefix. So the json_schema half
    uses documents that are complete within the limit (a string with a pattern, an integer in a
    range: their grammar leaves no room for padding inside) and checks them whole; an object
    schema is then checked character by character as far as the model got."""
    import openvino_genai as og

    def shaped(**structure: str) -> Out:
        return npu.run(npu.config(tokens=40, all_tokens=False,
                                  structured_output_config=og.StructuredOutputConfig(**structure)))

    regex = shaped(regex="[a-z]{3,10}")
    assert re.fullmatch("[a-z]{3,10}", regex.text), regex.text
    code = json.loads(shaped(json_schema=json.dumps({"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"})).text)
    assert isinstance(code, str) and re.fullmatch("[a-z]{3}-[0-9]{2}", code), code
    number = json.loads(shaped(json_schema=json.dumps({"type": "integer", "minimum": 3, "maximum": 7})).text)
    assert isinstance(number, int) and 3 <= number <= 7, number
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}}, "required": ["a"],
              "additionalProperties": False}
    padded = shaped(json_schema=json.dumps(schema))
    # Every character so far follows the schema: '{', the only key "a", a string of at most 8.
    assert re.fullmatch(r'\{\s*(?:"(?:a(?:"\s*(?::\s*(?:"[^"]{0,8}(?:"\s*\}?\s*)?)?)?)?)?)?', padded.text), padded.text
    if padded.finish == "STOP":
        assert set(json.loads(padded.text)) == {"a"}


def test_beam_search_and_several_sequences_are_refused(npu: Npu) -> None:
    with pytest.raises(RuntimeError, match="only greedy and multinomial decoding are supported for NPU device"):
        npu.run(npu.config(num_beams=2))
    with pytest.raises(RuntimeError, match='only "num_return_sequences" equal to 1 is supported for NPU device'):
        npu.run(npu.config(do_sample=True, num_return_sequences=2))
    assert npu.run(npu.config(tokens=4)).generated == 4  # the pipeline works on after refusing


def test_prompt_lookup_is_accepted_and_ignored(npu: Npu) -> None:
    """An NPU pipeline built with prompt_lookup=True (npud never builds one: see
    test_npu.py) runs one inference per token, as without it: no draft tokens are ever checked,
    even when the prompt holds the very continuation. The CPU pipeline, which honours it, does
    fewer inferences on the same prompt."""
    import openvino_genai as og

    continuation = npu.run(npu.config()).text
    echo = npu.engine.render_prompt(JOBS["summary"].messages(f"Repeat exactly: {continuation}"))[0]
    drafts = {"num_assistant_tokens": 5, "max_ngram_size": 3}
    looked_up = og.LLMPipeline(str(model_dir(npu.model)), "NPU", prompt_lookup=True, **npu.props)
    with_lookup = npu.run(npu.config(**drafts), looked_up, echo)
    plain = npu.run(npu.config(), prompt=echo)
    assert with_lookup.ids == plain.ids and with_lookup.infer_calls == with_lookup.generated == TOKENS
    if npu.model == MODELS[0]:  # the control, once: the option does work where it is honoured
        cpu = og.LLMPipeline(str(model_dir(npu.model)), "CPU", prompt_lookup=True)
        assert npu.run(npu.config(**drafts), cpu, echo).infer_calls < TOKENS
