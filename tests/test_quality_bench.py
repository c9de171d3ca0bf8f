"""`python -m bench.quality` end to end: a real npud child process with the tiny random model.

The tiny model writes gibberish, so this checks that the command runs and reports the right shape,
not the scores (those are in the README, measured on SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import evalset, quality

pytestmark = pytest.mark.realmodel


def test_quality_command_runs_every_job_through_the_daemon(
    tiny_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.json"
    status = quality.main(["--model", str(tiny_gguf), "--device", "CPU", "--split", "all", "--limit", "1",
                           "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "model tiny-qwen2 on CPU" in printed
    assert "well-formed" in printed and "leaked secrets" in printed

    report = json.loads(out.read_text())
    assert report["model"] == "tiny-qwen2" and report["device"] == "CPU"
    assert set(report["summary"]) == set(evalset.JOBS)
    for job, by_split in report["summary"].items():
        assert set(by_split) == {"dev", "heldout", "all"}
        assert by_split["all"]["n"] == 1 and by_split["dev"]["n"] == 1  # --limit 1: the first item, a dev one
    records = {r["job"]: r for r in report["items"]}
    assert set(records) == set(evalset.JOBS)
    for record in records.values():
        assert record["error"] is None, record["error"]  # the daemon answered every job
        assert record["generated_tokens"] > 0
        assert isinstance(record["output"], str) and isinstance(record["well_formed"], bool)
    memory = records["memory_candidate"]
    assert isinstance(memory["candidates"], list) and len(memory["candidate_scores"]) == len(memory["candidates"])
    # Outputs go to the --json file only, never to the printed report.
    for record in records.values():
        if len(record["output"]) > 12:
            assert record["output"] not in printed


def test_split_selection_and_limit() -> None:
    items = evalset.load("title")
    heldout = quality.select(items, "heldout", None)
    assert heldout and all(item.split == "heldout" for item in heldout)
    assert len(quality.select(items, "dev", None)) + len(heldout) == len(items)
    assert quality.select(items, "all", 3) == items[:3]


def test_unknown_job_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        quality.parse_args(["--model", "m", "--device", "CPU", "--jobs", "title,poem"])
    assert "unknown jobs: poem" in capsys.readouterr().err
