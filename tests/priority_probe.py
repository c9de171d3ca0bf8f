"""``python -m tests.priority_probe CONFIG_JSON``: run npud's real worker on a real model in a fresh
process and print, as JSON, every thread's nice value and policy before the worker started and
after it loaded the model and ran one job.

A fresh process, because OpenVINO's thread pool is per process: threads an earlier test made in
the pytest process would be reused and say nothing about what the worker's load creates. As in
the daemon, the main thread imports OpenVINO first and runs the asyncio loop that submits the job.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import msgspec

from npud.config import Config
from npud.engine import OpenVinoLoader
from npud.jobs import JOBS
from npud.priority import thread_priority
from npud.worker import Job, Worker


def threads() -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for name in os.listdir("/proc/self/task"):
        try:
            priority = thread_priority(int(name))
        except OSError:
            continue  # the thread ended meanwhile
        found[int(name)] = [priority.nice, priority.policy]
    return found


async def one_job(worker: Worker) -> str:
    loop = asyncio.get_running_loop()
    job = Job(spec=JOBS["title"], input="We moved the standup to 9:30.", max_new_tokens=8, loop=loop,
              future=loop.create_future(), received_at=worker.now(), timeout_ms=120_000)
    worker.submit(job)
    return (await job.future).finish_reason


def main(config_json: str) -> None:
    import openvino_genai  # noqa: F401  (the daemon's preflight imports it on the main thread too)

    config = msgspec.json.decode(config_json, type=Config)
    before = threads()
    worker = Worker(config, OpenVinoLoader(), None, None)
    worker.start()
    # The main thread blocks here rather than in an executor thread: no thread but the
    # worker's (and what it makes) may appear between the two readings.
    worker.wait_loaded(300)
    snapshot = worker.snapshot()
    finish = asyncio.run(one_job(worker)) if snapshot.status == "ready" else None
    after = threads()
    worker.stop()
    worker.join(30)
    json.dump({
        "main": os.getpid(), "worker": worker._thread.native_id, "status": snapshot.status, "error": snapshot.error,
        "finish": finish, "before": before, "after": after,
        "reported": msgspec.to_builtins(snapshot.priority),
    }, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
