"""GET /metrics: Prometheus text that the reference parser reads, counters that move with
the traffic, and labels that never carry user content."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol.codes import CloseCode
from server import metrics
from tests.harness import (
    LiveServer,
    assert_closed,
    expect_messages,
    live_server,
    make_settings,
    publish,
    send,
    subscribe,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: LiveServer) -> tuple[Samples, str]:
    async with server.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_with_traffic(server: LiveServer) -> None:
    tenant = await server.tenant()
    alice, bob = await server.user(tenant), await server.user(tenant)
    await server.channel(tenant, "general", alice)
    before, _ = await scrape(server)

    wa, wb = await server.session(tenant, alice), await server.session(tenant, bob)
    await subscribe(wa, "general")
    await subscribe(wb, "general")
    for i in range(3):
        await publish(wa, "general", f"secret body {i}")
    await expect_messages(wb, 3)
    bad = await server.connect()
    await send(bad, {"type": "auth", "token": "not-a-token"})
    await assert_closed(bad, CloseCode.UNAUTHORIZED)
    after, text = await scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("baychat_deliveries_total") == 6  # 3 messages x 2 subscribers
    assert moved("baychat_fanouts_total") == 3
    assert moved("baychat_frames_in_total", type="publish") == 3
    assert moved("baychat_frames_in_total", type="subscribe") == 2
    assert moved("baychat_frames_out_total", type="message") == 6
    assert moved("baychat_frames_out_total", type="ack") == 3
    assert moved("baychat_connections_opened_total", kind="user") == 2
    assert moved("baychat_connections", kind="user") == 2
    assert moved("baychat_auth_failures_total", code="unauthorized") == 1
    assert moved("baychat_ack_latency_seconds_count") == 3
    assert moved("baychat_fanout_latency_seconds_count") == 3
    assert moved("baychat_persistence_batch_size_sum") == 3
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    # No user content and no identifiers in any label, only small fixed vocabularies.
    for secret in ("secret body", tenant.id, tenant.slug, alice.id, bob.id, "general"):
        assert secret not in text


async def test_rate_limit_hits_are_counted_by_bounded_scope(server: LiveServer) -> None:
    before, _ = await scrape(server)
    metrics.rate_limited("publish_user")
    metrics.rate_limited("login_ip")
    metrics.rate_limited("whatever a caller passes")
    after, _ = await scrape(server)
    for scope in ("publish_user", "login_ip", "other"):
        name = "baychat_rate_limit_hits_total"
        assert value(after, name, scope=scope) - value(before, name, scope=scope) == 1
    scopes = {dict(labels)["scope"] for name, labels in after if name.startswith("baychat_rate")}
    assert scopes <= metrics.RATE_LIMIT_SCOPES


async def test_a_refusal_by_the_rate_limiter_is_counted_by_policy(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path, rate_login_ip="1/minute")) as server:
        before, _ = await scrape(server)
        body = {"tenant": "nobody", "email": "nobody@example.com", "password": "wrong one"}
        async with server.http() as http:
            first = await http.post("/api/v1/auth/login", json=body)
            second = await http.post("/api/v1/auth/login", json=body)
        assert (first.status_code, second.status_code) == (401, 429)
        after, _ = await scrape(server)
    name = "baychat_rate_limit_hits_total"
    assert value(after, name, scope="login_ip") - value(before, name, scope="login_ip") == 1
    failed = value(after, "baychat_auth_failures_total", code="unauthorized") - value(
        before, "baychat_auth_failures_total", code="unauthorized"
    )
    assert failed == 1


def test_per_frame_counts_and_the_ack_histogram_reach_the_exposition() -> None:
    """Frames and ack latencies are counted in plain integers on the loop and handed to
    prometheus-client when ``/metrics`` is rendered: the same series and the same bucket
    rule as a ``Histogram`` ("le": a value on a bound counts in that bucket)."""

    def samples() -> Samples:
        found: Samples = {}
        for family in text_string_to_metric_families(metrics.render().decode()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    before = samples()
    for _ in range(3):
        metrics.frame_in("publish")
    metrics.frame_in("no-such-type")
    metrics.frame_out("ack", 2)
    for latency in (0.0005, 0.001, 0.003, 0.05, 9.0):
        metrics.acked(latency)
    after = samples()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("baychat_frames_in_total", type="publish") == 3
    assert moved("baychat_frames_in_total", type="invalid") == 1
    assert moved("baychat_frames_out_total", type="ack") == 2
    hist = "baychat_ack_latency_seconds"
    assert moved(f"{hist}_bucket", le="0.001") == 2
    assert moved(f"{hist}_bucket", le="0.0025") == 2
    assert moved(f"{hist}_bucket", le="0.005") == 3
    assert moved(f"{hist}_bucket", le="0.05") == 4
    assert moved(f"{hist}_bucket", le="2.5") == 4
    assert moved(f"{hist}_bucket", le="+Inf") == 5
    assert moved(f"{hist}_count") == 5
    assert moved(f"{hist}_sum") == pytest.approx(9.0545)
    again = samples()  # a render hands each count over once
    assert value(again, "baychat_frames_in_total", type="publish") == value(
        after, "baychat_frames_in_total", type="publish"
    )
    assert value(again, f"{hist}_count") == value(after, f"{hist}_count")
