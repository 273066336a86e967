"""`/metrics` on real processes: every service's parses as Prometheus text and
counts the messages it just handled, the learner-facing figures are there, and a
consumer group's lag rises while its worker is stopped and falls once it is back.
"""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.redis_server import local_redis
from tests.support.services import ServiceProcess, running, start_service
from tests.support.stack import base_env, converse
from tests.wire.openai_server import OpenAIWireServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, ServiceProcess], dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("metrics")
    with OpenAIWireServer() as llm, local_redis() as server:
        llm.echo = True
        env = {**base_env(server.url, llm, tmp / "archive.db"), "REPLY_TIMEOUT": "4"}
        with running(["archiver", "responder", "gateway"], env, tmp) as services:
            yield services, env, tmp


def scrape(service: ServiceProcess) -> Samples:
    """Every sample of the service's /metrics, parsed by prometheus-client."""
    text = httpx.get(service.base_url + "/metrics", timeout=10).raise_for_status().text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_every_service_counts_what_it_just_did(
    stack: tuple[dict[str, ServiceProcess], dict[str, str], Path],
) -> None:
    services, _, _ = stack
    for n in range(3):
        reply = await converse(services["gateway"], "metered", f"counting thought {n}")
        assert "counting thought" in reply["agent_text"]
    await asyncio.sleep(1.0)  # the archiver writes in batches
    gateway = scrape(services["gateway"])
    assert value(gateway, "lva_reply_seconds_count", source="api", input="text") >= 3
    assert value(gateway, "lva_replies_total", source="api", outcome="answered") >= 3
    assert value(gateway, "lva_model_seconds_count", source="api") >= 3
    assert value(gateway, "http_requests_total", handler="/api/conversation") >= 3
    assert (
        value(gateway, "faststream_published_messages_total", destination="utterance.received") >= 3
    )
    responder = scrape(services["responder"])
    processed = value(
        responder,
        "faststream_received_processed_messages_total",
        app_name="responder",
        handler="utterance.received",
        status="acked",
    )
    assert processed >= 3
    # The provider's own count of the tokens of each call (the wire server reports them).
    assert value(responder, "lva_model_tokens_count", provider="openai", direction="output") >= 3
    assert value(responder, "lva_model_tokens_sum", provider="openai", direction="input") > 0
    archiver = scrape(services["archiver"])
    assert value(archiver, "faststream_received_messages_total", handler="exchange.completed") >= 1


async def test_a_groups_lag_rises_while_its_worker_is_stopped_and_falls_after(
    stack: tuple[dict[str, ServiceProcess], dict[str, str], Path],
) -> None:
    services, env, tmp = stack
    gateway = services["gateway"]

    def lag() -> float:
        samples = scrape(gateway)
        return value(
            samples, "lva_group_lag_messages", stream="utterance.received", group="responder"
        )

    services["responder"].stop()
    try:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/api/conversation", json={"session_id": "lagging", "text": f"waiting {n}"}
                    )
                    for n in range(5)
                )
            )
        assert {a.status_code for a in answers} == {504}
        deadline = time.monotonic() + 15
        while lag() < 5:
            assert time.monotonic() < deadline, f"lag stayed at {lag()}"
            await asyncio.sleep(0.5)
    finally:
        services["responder"] = start_service("responder", env, tmp)
    deadline = time.monotonic() + 20
    while lag() > 0:
        assert time.monotonic() < deadline, f"lag stayed at {lag()}"
        await asyncio.sleep(0.5)


def test_every_service_says_it_is_alive_and_whether_it_is_ready(
    stack: tuple[dict[str, ServiceProcess], dict[str, str], Path],
) -> None:
    services, _, _ = stack
    for name, service in services.items():
        live = httpx.get(service.base_url + "/health/live", timeout=10)
        assert live.status_code == 200 and live.json()["status"] == "alive", name
        ready = httpx.get(service.base_url + "/health/ready", timeout=10)
        health = httpx.get(service.base_url + "/health", timeout=10)
        assert ready.status_code == health.status_code == 200, name
        assert ready.json()["status"] == health.json()["status"] == "healthy", name
