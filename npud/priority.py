"""The inference's CPU priority: below the event loop's and below the user's own programs.

On Linux the nice value and the scheduling policy belong to a *thread*, and a thread inherits
both from the thread that creates it (and a child process from the thread that forks it).
OpenVINO creates its inference threads while the pipeline is constructed (measured: the CPU
plugin's and the emulated NPU pipeline's threads all appear during the load, none during
generate, and take the constructing thread's nice), and GenAI's streamer thread is made by the
thread that calls generate. So the worker thread lowers its own priority once, before it loads
anything: every thread OpenVINO makes for it, and the GGUF converter child it starts, run at
the lower priority; the event loop's thread is never touched.

The level is relative: ``--worker-nice 10`` puts the inference 10 nice steps below the thread
that started the worker (the event loop), capped at 19, the lowest. npud started under ``nice
-n 5`` then runs its inference at 15, still below its own event loop, not level with it.
Lowering is one-way for an unprivileged process (raising the priority back needs CAP_SYS_NICE),
and a relative step only ever lowers; the worker thread does it once (a retried load runs on the
same thread), and a refusal is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import threading
from npuclient.protocol import WorkerPriority

from .config import SchedPolicy

log = logging.getLogger("npud.priority")

#: The Linux policies by the names npud uses (sched(7)). ``other`` is the normal time-sharing
#: policy; ``batch`` is the same share but never preempts a thread that wakes up; ``idle`` runs
#: only on CPU time nobody else wants (a share far below nice 19).
_POLICY_IDS: dict[SchedPolicy, int] = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
NICE_LOWEST = 19
#: Real-time policies: a thread under one runs before every normal thread whatever its nice
#: value, so the worker never keeps one (npud started under ``chrt -f``).
_REAL_TIME: dict[int, str] = {os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}
_POLICY_NAMES: dict[int, str] = {value: name for name, value in _POLICY_IDS.items()} | _REAL_TIME


def thread_priority(tid: int) -> WorkerPriority:
    """The nice value and policy a thread runs with now (``tid``: a native thread id)."""
    policy = os.sched_getscheduler(tid)
    return WorkerPriority(nice=os.getpriority(os.PRIO_PROCESS, tid),
                          policy=_POLICY_NAMES.get(policy, str(policy)))


def lower_this_thread(steps: int, policy: SchedPolicy) -> WorkerPriority:
    """Lower the calling thread by ``steps`` nice steps (to 19 at most) and set ``policy``;
    return what applies.

    ``other`` leaves a normal policy as it is (``batch`` or ``idle`` inherited from npud's start
    stay: an unprivileged thread could not leave ``idle`` anyway). A real-time policy inherited
    from npud's start (``fifo``, ``rr``) is always left for ``other``: nice does not apply to it,
    and the inference would run ahead of every program of the user.
    """
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    nice = min(NICE_LOWEST, current + steps)
    if nice > current:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError as exc:
            log.warning("cannot lower the worker's priority to nice %d: %s", nice, exc.strerror)
    current_policy = os.sched_getscheduler(tid)
    if current_policy != _POLICY_IDS[policy] and (policy != "other" or current_policy in _REAL_TIME):
        try:
            # pid 0 is the calling thread; the static priority of these policies is always 0.
            os.sched_setscheduler(0, _POLICY_IDS[policy], os.sched_param(0))
        except OSError as exc:
            log.warning("cannot set the worker's scheduling policy to %s: %s", policy, exc.strerror)
    applied = thread_priority(tid)
    log.info("inference runs at nice %d, policy %s", applied.nice, applied.policy)
    return applied
