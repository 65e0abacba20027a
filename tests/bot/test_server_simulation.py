"""Many servers with bursty traffic through the real scheduler, dispatcher and job store, on the
simulated back end of bench/server_sim.py (a smaller size than the benchmark's thousand servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.server_sim import StartOrder, Traffic, bursty_arrivals, fairness_violations, simulate


def order_of(events: list[tuple[str, int, int]]) -> StartOrder:
    return StartOrder(events=list(events))


def test_the_fairness_check_accepts_round_robin_and_flags_a_server_served_twice_ahead() -> None:
    # Server 2 queues three jobs, then server 1 one job.
    queued = [("enqueue", 1, 2), ("enqueue", 2, 2), ("enqueue", 3, 2), ("enqueue", 4, 1)]
    round_robin = [("start", 1, 2), ("start", 4, 1), ("start", 2, 2), ("start", 3, 2)]
    assert fairness_violations(order_of(queued + round_robin)) == []
    # First come, first served: server 1's only job waits behind all three of server 2's.
    fifo = [("start", 1, 2), ("start", 2, 2), ("start", 3, 2), ("start", 4, 1)]
    (violation,) = fairness_violations(order_of(queued + fifo))
    assert "job 4 of server 1 (0 of its own ahead) waited behind 3 jobs of server 2" in violation
    # A server's own queue counts: its third job may see two of another server start first.
    own_backlog = [("enqueue", 1, 1), ("enqueue", 2, 1), ("enqueue", 3, 2), ("enqueue", 4, 2)]
    interleaved = [("start", 1, 1), ("start", 3, 2), ("start", 2, 1), ("start", 4, 2)]
    assert fairness_violations(order_of(own_backlog + interleaved)) == []
    assert fairness_violations(order_of([("enqueue", 9, 1)])) == ["job 9 never started"]


def test_the_traffic_has_a_few_busy_servers_and_many_quiet_ones() -> None:
    traffic = Traffic(servers=50, busy_servers=2, busy_jobs=10, burst_size=5, window_s=100, seed=3)
    arrivals = bursty_arrivals(traffic)
    per_server: dict[int, int] = {}
    for arrival in arrivals:
        per_server[arrival.guild_id] = per_server.get(arrival.guild_id, 0) + 1
    assert per_server[1] == per_server[2] == 10
    assert len(per_server) == 50 and all(1 <= per_server[g] <= 2 for g in range(3, 51))
    assert [a.at_s for a in arrivals] == sorted(a.at_s for a in arrivals)


@pytest.mark.parametrize("continuous_batching", [True, False], ids=["joining", "batches-only"])
async def test_bursty_servers_all_get_their_jobs_done_in_a_fair_order(
    tmp_path: Path, continuous_batching: bool
) -> None:
    traffic = Traffic(servers=80, busy_servers=4, busy_jobs=16, burst_size=8, window_s=60, seed=1)
    report, guild_of = await simulate(
        traffic,
        backend="simulated",
        workers=2,
        max_batch_size=4,
        time_scale=0.005,
        continuous_batching=continuous_batching,
        folder=tmp_path,
    )
    assert report.jobs == len(bursty_arrivals(traffic))
    assert report.completed == report.jobs
    assert report.failures == []
    assert report.violations == []  # jobs joining running batches keep the round-robin's fairness
    assert sorted(report.waits_s) == sorted(guild_of)  # every job started exactly once, and was timed
    assert report.batches < report.jobs  # bursts were batched
    assert (report.joins > 0) is continuous_batching  # and, with it on, jobs joined running batches
    assert any("p99" in line for line in report.lines(guild_of))
