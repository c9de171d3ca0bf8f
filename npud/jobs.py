"""The job table: for each job its prompt, token limits, decoding settings and post-processing.

Prompts are written for Qwen2.5-Instruct (the production model) and checked on SmolLM2-135M
(the test model), which needs few-shot examples to keep to the form. Post-processing guards the
form whatever the model does: it never raises on odd output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from collections import Counter
from dataclasses import dataclass, field

from npuclient.protocol import MAX_NEW_TOKENS, DecodingInfo, JobName

from . import guards

TITLE_MAX_CHARS = 80
CANDIDATE_MAX_CHARS = 200
MAX_CANDIDATES = 8
#: memory_candidate's answer: a JSON array of at most MAX_CANDIDATES short strings.
MEMORY_SCHEMA = json.dumps({"type": "array", "maxItems": MAX_CANDIDATES,
                            "items": {"type": "string", "minLength": 1, "maxLength": CANDIDATE_MAX_CHARS}})

Message = dict[str, str]


@dataclass(frozen=True)
class JobOutput:
    text: str
    candidates: list[str] | None = None
    #: memory_candidate: statements dropped because they held a secret (a count, for /metrics;
    #: the statements themselves are gone).
    secrets_dropped: int = 0
    #: The same statements by kind of secret (a statement holding two kinds counts under both):
    #: fixed vocabulary (guards.SecretKind), safe to count and log.
    secret_kinds: dict[str, int] = field(default_factory=dict)
    #: title, notification: why the model's answer was replaced by the extractive one
    #: ("invented_number", "repetition"), or None when it was kept.
    fallback: str | None = None

    @property
    def is_empty(self) -> bool:
        return not self.text and self.candidates is None


@dataclass(frozen=True)
class PromptLookup:
    """Prompt-lookup decoding for one job (CPU pipelines only): draft ``num_assistant_tokens``
    tokens by matching the last generated n-gram (up to ``max_ngram_size`` tokens) in the prompt,
    and verify them in one pass."""

    num_assistant_tokens: int
    max_ngram_size: int


@dataclass(frozen=True)
class JobSpec:
    name: JobName
    system_prompt: str
    examples: tuple[tuple[str, str], ...]
    default_max_new_tokens: int
    max_new_tokens: int
    #: The raw model output and the job's input (to check the output against) -> the answer.
    postprocess: Callable[[str, str], JobOutput]
    #: Deadline when the client gives no ``timeout_ms``: generous for the NPU (a 1.5B model makes
    #: about 20 tokens/s), and short enough that a hung job is reported, not waited on forever.
    default_timeout_ms: int
    #: Used whenever the pipeline does prompt lookup (a pipeline built with it refuses a generation
    #: without these, so every job has them). Settings per job: README, "Decoding settings".
    prompt_lookup: PromptLookup
    # OpenVINO GenAI's repetition_penalty also penalises every *prompt* token, i.e. the names,
    # dates and numbers a title, summary or notification must copy (measured on the evaluation set:
    # 1.1 cut the key facts a notification keeps from 71% to 31%), and it makes prompt lookup
    # slower. So it stays 1.0; loops ("Wedding Wedding Wedding") are held back by
    # frequency_penalty, which counts generated tokens only. no_repeat_ngram_size is deliberately
    # absent: GenAI applies it in beam search only, so in npud's greedy decoding it does nothing
    # (measured on every pipeline: CONTRACT.md section 8).
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    #: Structured output: the answer is constrained to this JSON schema (every pipeline enforces it,
    #: the NPU's too: CONTRACT.md section 8).
    json_schema: str | None = None

    def decoding(self, prompt_lookup: bool) -> DecodingInfo:
        """What ``models`` reports: this job's decoding on a pipeline with or without prompt lookup."""
        drafts = self.prompt_lookup if prompt_lookup else None
        return DecodingInfo(
            strategy="prompt_lookup" if drafts else "greedy",
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            num_assistant_tokens=drafts.num_assistant_tokens if drafts else None,
            max_ngram_size=drafts.max_ngram_size if drafts else None,
            structured_output="json_schema" if self.json_schema else None,
        )

    def messages(self, user_input: str) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for example_input, example_output in self.examples:
            msgs.append({"role": "user", "content": example_input})
            msgs.append({"role": "assistant", "content": example_output})
        msgs.append({"role": "user", "content": user_input})
        return msgs


# ---------------------------------------------------------------- post-processing

_WRAPPING_QUOTES = "\"'`“”‘’«»"
_LABEL = re.compile(r"^\s*(?:title|summary|notification|headline)\s*[:\-–]\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _strip_decoration(text: str) -> str:
    text = _LABEL.sub("", text.strip())
    text = text.strip().strip("*#_ ").strip()
    while len(text) >= 2 and text[0] in _WRAPPING_QUOTES and text[-1] in _WRAPPING_QUOTES:
        text = text[1:-1].strip()
    return text.strip(_WRAPPING_QUOTES + " ")


def _cap_at_word(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut at a space. A word too long to keep whole (a link)
    is cut inside and marked with "…", so that a number cut short reads as cut, not as a
    different number (guards.invented_numbers accepts "4821…" as the start of the input's "48213")."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        return cut[:space].rstrip(" ,;:-–")
    return text[:limit - 1].rstrip(" ,;:-–") + "…"


# A title cut by the token limit can end mid-phrase ("Tips for a Quicker, Smarter, and").
_DANGLING = frozenset({"and", "or", "with", "for", "the", "a", "an", "of", "to", "in", "on", "by", "from", "&"})


_OPENING = "([{\"'“‘«"


def _drop_dangling(title: str) -> str:
    """Without the connectors, the words-less tokens ("(", "-") and the opening brackets and quotes
    a cut left at the end."""
    words = title.split()
    while len(words) > 1 and (words[-1].lower().strip(",;:-–") in _DANGLING
                              or not any(c.isalnum() for c in words[-1])):
        words.pop()
    return " ".join(words).rstrip(" ,;:-–" + _OPENING)


def _title_form(text: str) -> str:
    title = _strip_decoration(_first_line(text)).rstrip(".")
    title = guards.cap_words(title, guards.TITLE_MAX_WORDS)  # the prompt's "3 to 8 words"
    return _drop_dangling(_cap_at_word(title, TITLE_MAX_CHARS))


def _notification_form(text: str) -> str:
    line = _strip_decoration(_first_line(text))
    # "Dr. Rahman" or "10 a.m." does not end the sentence; the prompt's limit is 20 words.
    sentence = guards.first_sentence(line)
    capped = guards.cap_words(sentence, guards.NOTIFICATION_MAX_WORDS)
    return sentence if capped == sentence else _drop_dangling(capped)


_CLAUSE_END = re.compile(r"[,;:)]$|^[-–—(]$")


def _extractive_title(source: str) -> str:
    """The input's first sentence as a title: when it is over the word limit, cut at the last
    clause boundary (a comma, semicolon, colon, dash or bracket) that leaves at least three words,
    else at the limit ("Car: MOT due on 18 April, rear left tyre ..." -> "Car: MOT due on 18
    April")."""
    sentence = guards.first_sentence(_strip_decoration(_first_line(source)))
    tokens = sentence.split()
    if len(guards.words(sentence)) <= guards.TITLE_MAX_WORDS:
        return _title_form(sentence)
    capped = guards.cap_words(sentence, guards.TITLE_MAX_WORDS).split()
    for end in range(len(capped), 0, -1):
        if _CLAUSE_END.search(capped[end - 1]) or (end < len(tokens) and _CLAUSE_END.search(tokens[end])):
            if len(guards.words(" ".join(capped[:end]))) >= 3:
                return _title_form(" ".join(capped[:end]).rstrip(",;:(-–—"))
    return _title_form(" ".join(capped))


def _faithful(answer: str, source: str, form: Callable[[str], str]) -> JobOutput:
    """No number the input does not support, whatever the model wrote.

    A model that writes a number its input lacks has made something up (on the evaluation set:
    the few-shot example's "#482", "10pm to 12pm" in a car note), so its answer is replaced, not
    patched: by the extractive one, the input's own first sentence in the job's form, which copies
    its numbers from the input. Should the cut to that form still leave an unsupported number,
    the words holding one are dropped (guards.without_invented_numbers), so the guarantee holds by
    construction. A looping answer ("Quick, quick, quick") is replaced the same way."""
    invented = guards.invented_numbers(answer, source)  # once: it reads the whole input
    if not invented and not guards.repeats_itself(answer, 2):
        return JobOutput(answer)
    reason = "invented_number" if invented else "repetition"
    extractive = form(source)
    return JobOutput(guards.without_invented_numbers(extractive, source), fallback=reason)


def clean_title(raw: str, source: str) -> JobOutput:
    return _faithful(_title_form(raw), source, _extractive_title)


def clean_summary(raw: str, source: str) -> JobOutput:
    """At most three sentences (the prompt's limit) and never longer than the input.

    A sentence that repeats an earlier one (a small model's loop) is dropped; then sentences are
    dropped from the end, whole, until the summary is at most three and no longer than the input
    (characters of the answer as returned against the input as sent, as guards.summary_problems
    counts). When even the first sentence is longer than the input, the input is its own summary
    (its first three sentences, should so short an input have more). An answer within the limits
    is returned as the model wrote it, its white space tidied (guards.tidy_spaces: one space, or
    one line break, per run)."""
    text = guards.tidy_spaces(_LABEL.sub("", raw.strip()))
    limit = len(source)
    if not guards.summary_problems(text, source) or not text:
        return JobOutput(text)
    kept: list[str] = []
    for sentence in guards.sentences(text):
        if sentence.casefold() not in {k.casefold() for k in kept}:
            kept.append(sentence)
    kept = kept[:guards.SUMMARY_MAX_SENTENCES]
    while len(kept) > 1 and len(" ".join(kept)) > limit:
        kept.pop()
    summary = " ".join(kept)
    if len(summary) > limit:
        # A prefix of the input, not its sentences joined with spaces (CJK sentences have none).
        lead = guards.first_sentences(source, guards.SUMMARY_MAX_SENTENCES)
        return JobOutput(lead, fallback="longer_than_input")
    return JobOutput(summary)


def clean_notification(raw: str, source: str) -> JobOutput:
    return _faithful(_notification_form(raw), source, _notification_form)


def _candidates_from_json(raw: str) -> list[str] | None:
    start = min((i for i in (raw.find("["), raw.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(raw[start:])
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
        return _complete_strings(raw[start:]) if raw[start] == "[" else None
    if isinstance(value, dict):
        value = value.get("candidates", value.get("memories"))
    if not isinstance(value, list):
        return None
    return [item for item in value if isinstance(item, str)]


_JSON_STRING = re.compile(r'\s*("(?:[^"\\\n]|\\.)*")\s*(?:,|\]|$)')


def _complete_strings(text: str) -> list[str] | None:
    """The complete strings of a JSON array of strings cut short (by the token limit:
    '["Likes tea", "Has a c'), in order; None when it is not such an array."""
    found: list[str] = []
    position = 1
    while (match := _JSON_STRING.match(text, position)) is not None:
        try:
            found.append(json.loads(match.group(1)))
        except ValueError:
            break
        position = match.end()
    return found or None


def _candidates_from_lines(raw: str) -> list[str]:
    items = []
    for line in raw.splitlines():
        if _BULLET.match(line):
            items.append(_BULLET.sub("", line))
    return items


def clean_candidates(raw: str, source: str) -> JobOutput:
    """Short standalone statements; malformed output gives an empty list, never an exception.

    A statement holding a secret (password, one-time or access code, card number, IBAN, API key
    or token, private key: :func:`npud.guards.find_secrets`) is dropped whatever the model meant,
    and only counted: memory must never keep one. So is a statement that holds a secret value of
    the input away from its key word (:func:`npud.guards.secret_values`, read once per job), and
    so are two statements that hold a card number between them (:func:`npud.guards.cards_across`).
    """
    input_secrets = guards.secret_values(source)
    found = _candidates_from_json(raw)
    if found is None:
        found = _candidates_from_lines(raw)
    candidates: list[str] = []
    dropped: dict[str, tuple[guards.SecretKind, ...]] = {}
    for item in found:
        statement = " ".join(_strip_decoration(item).split())
        if (
            statement
            and statement.lower() not in {"none", "n/a", "nothing"}
            and len(statement) <= CANDIDATE_MAX_CHARS
            and len(guards.words(statement)) <= guards.CANDIDATE_MAX_WORDS
            and statement not in candidates
        ):
            kinds = tuple(sorted({*guards.find_secrets(statement), *guards.copied_secrets(statement, input_secrets)}))
            if kinds:
                dropped[statement] = kinds
            else:
                candidates.append(statement)
    # Each statement alone may hold half a card ("starts with 4539 1488", "ends with 0343 6467"):
    # together they would return the whole number, so both go.
    split = guards.cards_across(candidates)
    for index in sorted(split):
        dropped[candidates[index]] = ("payment_card",)
    candidates = [c for i, c in enumerate(candidates) if i not in split][:MAX_CANDIDATES]
    by_kind: Counter[str] = Counter(kind for kinds in dropped.values() for kind in kinds)
    return JobOutput("\n".join(candidates), candidates, secrets_dropped=len(dropped), secret_kinds=dict(by_kind))


# ---------------------------------------------------------------- the table

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            name="title",
            system_prompt=(
                "You write short titles. Read the user's text and reply with a title of 3 to 8 words "
                "that says what it is about. Reply with the title only: no quotes, no label, no "
                "explanation."
            ),
            examples=(
                ("I spent the afternoon trying to find out why the nightly CI job fails on the "
                 "arm64 runners but passes everywhere else.",
                 "Debugging Nightly CI Failures on arm64"),
                ("Can you help me plan meals for next week? I want cheap vegetarian dinners that "
                 "take less than 30 minutes.",
                 "Quick Cheap Vegetarian Dinner Plan"),
            ),
            default_max_new_tokens=24,
            max_new_tokens=32,
            postprocess=clean_title,
            default_timeout_ms=30_000,
            prompt_lookup=PromptLookup(num_assistant_tokens=3, max_ngram_size=4),
            frequency_penalty=0.6,
        ),
        JobSpec(
            name="summary",
            system_prompt=(
                "You summarize text. Reply with a summary of the user's text in at most three "
                "sentences. Keep names, dates and numbers. Reply with the summary only."
            ),
            examples=(
                ("The landlord wrote that the water will be shut off on Tuesday between 9:00 and "
                 "13:00 while the pipes in the basement are replaced. Residents should fill a few "
                 "bottles in advance. The work was postponed twice already because of the cold.",
                 "The water will be off on Tuesday from 9:00 to 13:00 while the basement pipes are "
                 "replaced, so residents should store some water beforehand."),
            ),
            default_max_new_tokens=128,
            max_new_tokens=MAX_NEW_TOKENS,
            postprocess=clean_summary,
            default_timeout_ms=120_000,
            prompt_lookup=PromptLookup(num_assistant_tokens=5, max_ngram_size=3),
            frequency_penalty=0.6,
        ),
        JobSpec(
            name="notification",
            system_prompt=(
                "You condense notifications. Rewrite the user's notification as one short sentence "
                "of at most 20 words that keeps the essential fact. Reply with the sentence only."
            ),
            examples=(
                ("GitHub: pull request #482 'Fix race in scheduler' was merged into main by "
                 "alice. 3 files changed, 41 additions, 12 deletions.",
                 "Alice merged pull request #482 fixing the scheduler race into main."),
            ),
            default_max_new_tokens=48,
            max_new_tokens=64,
            postprocess=clean_notification,
            default_timeout_ms=30_000,
            prompt_lookup=PromptLookup(num_assistant_tokens=5, max_ngram_size=3),
            frequency_penalty=0.6,
        ),
        JobSpec(
            name="memory_candidate",
            system_prompt=(
                "You find facts worth remembering about the user: lasting preferences, personal "
                "details, plans and commitments. Read the user's text and reply with a JSON array "
                "of strings, each a short standalone statement about the user. If there is nothing "
                "worth remembering, reply with []."
            ),
            examples=(
                ("I'm vegetarian, by the way, and I'm flying to Lisbon on the 14th for a "
                 "conference.",
                 '["The user is vegetarian.", "The user is flying to Lisbon on the 14th for a '
                 'conference."]'),
            ),
            default_max_new_tokens=128,
            max_new_tokens=MAX_NEW_TOKENS,
            postprocess=clean_candidates,
            default_timeout_ms=120_000,
            # The JSON array the prompt asks for, enforced by the sampler: on the evaluation set it
            # took recall from 39% to 54% and precision from 60% to 69% (the prompt alone, without
            # the schema, collapsed: SmolLM2 cannot write JSON unaided).
            json_schema=MEMORY_SCHEMA,
            prompt_lookup=PromptLookup(num_assistant_tokens=5, max_ngram_size=3),
        ),
    )
}
