"""Interleaved latency timing shared by the benchmarks that compare programs side by side.

On a shared machine the load drifts by 10% or more within a minute.  A
benchmark that times program A for a while and then program B charges that
drift to the ratio B/A.  :func:`interleaved` instead times every program in
each *round*, one after the other, so that all of them see the same load, and
keeps each round's median: a ratio taken round by round then cancels the drift
common to the programs, and the median over rounds drops the rounds a burst
of foreign load hit.
"""

from __future__ import annotations

import statistics
import time


def interleaved(calls: dict, rounds: int, *, per_round: int = 1, warmup: int = 1, rewarm: int = 0,
                rewarm_s: float = 0.0, settle_s: float = 0.0, slow_s: float | None = None, slow_rounds: int = 10,
                errors: dict | None = None) -> dict:
    """Per-round median milliseconds of each callable, timed in interleaved rounds.

    Parameters
    ----------
    calls : dict of str to callable
        The programs, each a no-argument callable running one inference.
    rounds : int
        Number of rounds.  Each round runs, for each program in turn, ``rewarm``
        untimed calls (more while ``rewarm_s`` has not passed) and then ``per_round``
        timed ones.
    warmup : int
        Untimed calls of each program before the first round (at least one: it also
        tells a slow program, and a program that fails, before any timing).
    rewarm_s : float
        Least seconds of untimed calls before a turn's timed ones.  After an idle
        pause (``settle_s``) a core is slow for several milliseconds: on this VM a
        0.07 ms program's first call took 0.36 ms, and a 0.15 ms program timed after
        a 0.5 s pause and 2 untimed calls read 0.18-0.20 ms against 0.14-0.15 ms
        back to back.  A count of calls cannot cover that for every program size;
        a time can.
    settle_s : float
        Seconds to sleep before each program's turn in a round.  Multi-threaded
        runtimes busy-wait after a call (ONNX Runtime's pool of each session,
        GNU OpenMP under PyTorch, TVM's pool); without a pause the previous
        program's spinning workers take the cores from the next one.
    slow_s : float, optional
        A program whose first warm-up call, times ``rounds * per_round``, would exceed
        this many seconds (a naive-loop baseline) is timed in the first
        ``slow_rounds`` rounds only.
    errors : dict, optional
        If given, a program that raises is dropped and ``errors[name]`` holds
        ``"Type: first line of the message"``; otherwise the exception propagates.

    Returns
    -------
    dict of str to list of float
        ``name -> [median ms of round r]`` for the rounds the program ran in.
    """
    live, limit = {}, {}
    for name, fn in calls.items():
        try:
            t0 = time.perf_counter()
            for _ in range(max(warmup, 1)):
                fn()
            first = (time.perf_counter() - t0) / max(warmup, 1)
        except Exception as err:  # noqa: BLE001 - reported per program when errors is given
            if errors is None:
                raise
            errors[name] = error_line(err)
            continue
        live[name] = fn
        slow = slow_s is not None and first * rounds * per_round > slow_s
        limit[name] = min(rounds, slow_rounds) if slow else rounds
    out: dict = {name: [] for name in live}
    for r in range(rounds):
        for name, fn in live.items():
            if r >= limit[name]:
                continue
            if settle_s:
                time.sleep(settle_s)
            t_warm = time.perf_counter()
            done = 0
            while done < rewarm or time.perf_counter() - t_warm < rewarm_s:
                fn()
                done += 1
            ts = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name].append(1e3 * statistics.median(ts))
    return out


def error_line(err: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 300 characters of it): how a benchmark reports a failed program."""
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return f"{type(err).__name__}: {first}"


def median_ms(per_round: dict) -> dict:
    """``name -> median over rounds`` of :func:`interleaved`'s result."""
    return {name: float(statistics.median(v)) for name, v in per_round.items()}


def cpu_jiffies() -> tuple[int, int] | None:
    """``(steal, total)`` clock ticks of all CPUs so far, from ``/proc/stat`` (``None`` where it is not readable).

    *Steal* is time a virtual CPU was ready to run but the hypervisor ran
    something else.  On a cloud VM whose two vCPUs share oversubscribed host
    cores it is near zero with one busy vCPU and can reach tens of percent with
    both busy: then no 2-thread program can run twice as fast as a 1-thread one.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Stolen share of all CPU time between two :func:`cpu_jiffies` readings: ``d steal / d total``."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
