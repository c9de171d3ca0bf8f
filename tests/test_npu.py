"""The daemon in --device NPU mode on the NPU stand-in: the real OpenVinoLoader and OpenVinoEngine,
a FakeNpuPipeline with the NPU pipeline's behaviour, and a synthetic sysfs tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from npud import compile_cache
from npud.engine import pipeline_properties
from npud.testing.npu import FAKE_PROPERTIES, FakeNpuPipeline, npu_loader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import make_config, start_daemon

pytestmark = pytest.mark.realmodel


def npu_daemon(tmp_path: Path, model: Path, advance_busy: bool = True, compiles: list[str] | None = None,
               **overrides: Any) -> Any:
    busy = make_npu_sysfs(tmp_path / "sys", busy_us=1_000_000)
    config = make_config(tmp_path, model=str(model), device="NPU", sysfs_root=str(tmp_path / "sys"), **overrides)
    return start_daemon(config, npu_loader(busy, advance_busy=advance_busy, compiles=compiles)), busy


def test_npu_mode_end_to_end_with_facts(tmp_path: Path, tiny_ir: Path) -> None:
    daemon, busy = npu_daemon(tmp_path, tiny_ir)
    try:
        result = daemon.call("generate", {"job": "summary", "input": "Errors should never pass silently.",
                                          "max_new_tokens": 16})["result"]
        assert result["device"] == "NPU" and result["npu_busy_delta_us"] > 0
        health = daemon.call("health")["result"]
        info = health["device_info"]
        assert info["device"] == "NPU" and info["full_device_name"] == FAKE_PROPERTIES["FULL_DEVICE_NAME"]
        assert info["npu_driver_version"] == FAKE_PROPERTIES["NPU_DRIVER_VERSION"]
        assert info["npu_compiler_version"] == "7.21"
        assert info["device_total_mem_bytes"] == 16 * 1024**3
        assert (info["max_prompt_len"], info["min_response_len"]) == (1024, 64)
        assert (info["prefill_hint"], info["generate_hint"]) == ("DYNAMIC", "FAST_COMPILE")
        assert info["busy_file"] == str(busy) and info["max_frequency_mhz"] == 1400
        assert info["busy_time_since_start_us"] == result["npu_busy_delta_us"]  # live, attributed
        assert info["openvino_version"].startswith("2026.") and info["genai_version"].startswith("2026.")
        cache = info["compile_cache"]
        assert cache["hit"] is False and Path(cache["path"]).name == cache["key"]
        assert health["stats"]["npu_busy_us"] == {"summary": result["npu_busy_delta_us"]}
        assert daemon.call("models")["result"]["models"][0]["device_info"]["npu_compiler_version"] == "7.21"
    finally:
        daemon.stop()


def test_npu_properties_reach_the_pipeline(tmp_path: Path) -> None:
    config = make_config(tmp_path, device="NPU", max_prompt_tokens=512, min_response_len=128)
    props = pipeline_properties(config, tmp_path / "blobs")
    assert props == {"CACHE_DIR": str(tmp_path / "blobs"), "MAX_PROMPT_LEN": 512, "MIN_RESPONSE_LEN": 128,
                     "PREFILL_HINT": "DYNAMIC", "GENERATE_HINT": "FAST_COMPILE"}


def test_silent_cpu_fallback_is_caught(tmp_path: Path, tiny_ir: Path) -> None:
    daemon, _ = npu_daemon(tmp_path, tiny_ir, advance_busy=False)
    try:
        error = daemon.call("generate", {"job": "title", "input": "Is this on the NPU?"})["error"]
        assert error["code"] == -32002 and error["data"]["reason"] == "no_growth"
        assert "result" not in error
    finally:
        daemon.stop()


def test_prompt_limit_is_enforced_before_the_device(tmp_path: Path, tiny_ir: Path) -> None:
    text = ("Now is better than never. Although never is often better than right now. " * 70)[:5000]
    daemon, busy = npu_daemon(tmp_path, tiny_ir)
    try:
        before = busy.read_text()
        error = daemon.call("generate", {"job": "summary", "input": text})["error"]
        assert error["code"] == -32602 and error["data"]["limit"] == 1024 and error["data"]["unit"] == "tokens"
        assert "Stateful LLM pipeline" not in error["message"]  # refused by npud, not by the device
        assert busy.read_text() == before  # the NPU never ran
    finally:
        daemon.stop()


def test_stand_in_behaves_like_the_npu_pipeline(tmp_path: Path, tiny_ir: Path) -> None:
    with pytest.raises(RuntimeError, match="missing properties"):
        FakeNpuPipeline(str(tiny_ir), "NPU", busy_file=None, CACHE_DIR=str(tmp_path))
    props = pipeline_properties(make_config(tmp_path, device="NPU", max_prompt_tokens=64), tmp_path / "blobs")
    pipe = FakeNpuPipeline(str(tiny_ir), "NPU", busy_file=None, **props)
    config = pipe.get_generation_config()
    config.max_new_tokens = 4
    config.apply_chat_template = False
    with pytest.raises(RuntimeError, match=r"may only process prompts or hold chat history up to 64 tokens\. \d+ is passed\."):
        pipe.generate(["Beautiful is better than ugly. " * 40], config)
    config.num_beams = 2
    config.num_return_sequences = 1
    with pytest.raises(RuntimeError, match="only greedy and multinomial"):
        pipe.generate(["short"], config)


def test_compile_cache_key_hit_and_prune(tmp_path: Path, tiny_ir: Path) -> None:
    compiles: list[str] = []
    first, _ = npu_daemon(tmp_path, tiny_ir, compiles=compiles)
    info = first.call("health")["result"]["device_info"]["compile_cache"]
    first.stop()
    second, _ = npu_daemon(tmp_path, tiny_ir, compiles=compiles)
    again = second.call("health")["result"]["device_info"]["compile_cache"]
    second.stop()
    assert compiles == ["compiled", "cached"]
    assert again == {**info, "hit": True}
    manifest = json.loads((Path(info["path"]) / compile_cache.MANIFEST).read_text())
    assert manifest["key"] == info["key"] and manifest["device"] == "NPU"
    assert manifest["npu_driver"] == FAKE_PROPERTIES["NPU_DRIVER_VERSION"] and manifest["npu_compiler"] == "7.21"
    assert manifest["properties"]["MAX_PROMPT_LEN"] == 1024 and "openvino" in manifest
    assert {"openvino_model.xml", "openvino_model.bin"} <= set(manifest["model_files"])
    assert manifest["model_path"] == str(tiny_ir.resolve())

    # Another configuration (a different prompt budget) compiles into another folder...
    other, _ = npu_daemon(tmp_path, tiny_ir, compiles=compiles, max_prompt_tokens=512)
    other_info = other.call("health")["result"]["device_info"]["compile_cache"]
    other.stop()
    assert other_info["key"] != info["key"] and other_info["hit"] is False
    # ...and with a tiny size cap the older folder is pruned, the one in use never.
    small, _ = npu_daemon(tmp_path, tiny_ir, compiles=compiles, cache_max_mb=1)
    kept = small.call("health")["result"]["device_info"]["compile_cache"]
    small.stop()
    root = Path(info["path"]).parent
    (root / "stale-config").mkdir()
    (root / "stale-config" / "blob").write_bytes(b"\0" * 2 * 1024 * 1024)
    removed = compile_cache.prune(root, keep=kept["key"], max_bytes=1024 * 1024)
    assert "stale-config" in removed and (root / kept["key"]).is_dir()
    assert sorted(p.name for p in root.iterdir()) == [kept["key"]]
