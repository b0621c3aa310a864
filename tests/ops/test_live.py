"""A real `videoqa serve` process scraped by a real Prometheus (every second, the rules loaded).

A session is created from a small generated video with a question, followed up twice, and an Ask
on an unknown session fails with NOT_FOUND. Then:

- the live scrape of the metrics port has every metric the dashboard and the rules query;
- Prometheus' HTTP API reads back non-zero time to first token, inter-token and decode latency, KV
  bytes before and after pruning, and a session hit; the recording rules evaluate without error
  on the real series and the hit ratio comes out positive; every dashboard query runs on them.

Everything is bounded: every wait polls with a deadline; both processes are killed in ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_serving
from tests.media import make_video
from tests.ops import support

VIDEOQA = str(Path(sys.executable).parent / "videoqa")
MODEL = "tiny-qwen2-vl"
MAX_NEW_TOKENS = 6

pytestmark = pytest.mark.slow


class Service:
    """`videoqa serve --insecure` on loopback ports, with its metrics endpoint."""

    def __init__(self, directory: Path) -> None:
        self.port, self.metrics_port = support.free_port(), support.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_address = f"127.0.0.1:{self.metrics_port}"
        self.log = directory / "videoqa.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        env = dict(os.environ, PYTHONUNBUFFERED="1", VIDEOQA_METRICS_LISTEN=self.metrics_address)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [VIDEOQA, "serve", "--insecure", "--listen", self.address, "--model", MODEL],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_serving(self.address, timeout=180)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class Driven:
    """What the fixture did, for the tests to check."""

    service: Service
    prometheus: support.Prometheus
    answers: list


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    from videoqa.client import FrameSampling, Generation, Pruning, VideoQAClient
    from videoqa.client.errors import NotFound

    support.binary("prometheus")  # skip (or fail in CI) before starting anything
    directory = tmp_path_factory.mktemp("live")
    video = directory / "clip.mp4"
    make_video(video, frames=24, size=(128, 96), fps=12)
    service = Service(directory)
    prometheus = support.Prometheus(
        directory, targets=[f"127.0.0.1:{service.metrics_port}"], rule_files=[support.RULES]
    )
    try:
        service.start()
        prometheus.start()
        prometheus.wait_for('up{job="videoqa"}', timeout=60)
        generation = Generation(max_new_tokens=MAX_NEW_TOKENS)
        with VideoQAClient(service.address) as client:
            session = client.create_session(
                str(video),
                model=MODEL,
                sampling=FrameSampling(num_frames=8),
                pruning=Pruning(method="das", budget=0.5),
                question="What is in the video?",
                generation=generation,
                timeout=120,
            )
            answers = [session.first_answer]
            # Each follow-up after Prometheus saw the previous turn, so counters rise between scrapes
            # (rates, and the recording rules built on them, need an increase inside their window).
            prometheus.wait_for("sum(videoqa_time_to_first_token_seconds_count)", timeout=60)
            answers.append(session.ask_text("And what happens last?", generation=generation, timeout=120))
            prometheus.wait_for('sum(videoqa_time_to_first_token_seconds_count{turn="followup"})', timeout=60)
            answers.append(session.ask_text("Which color is it?", generation=generation, timeout=120))
            with pytest.raises(NotFound):
                client.ask_text(uuid.uuid4().hex, "Is anyone there?", generation=generation, timeout=60)
        handle = Driven()
        handle.service, handle.prometheus, handle.answers = service, prometheus, answers
        yield handle
    except BaseException:
        print(f"--- videoqa log ---\n{service.logs()}\n--- prometheus log ---\n{prometheus.logs()}")
        raise
    finally:
        prometheus.stop()
        service.stop()


def _scraped_names(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Names in a scrape (families, their samples, counters with ``_total``) and each name's labels."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        family_names = {family.name}
        if family.type == "counter":
            family_names.add(f"{family.name}_total")
        names |= family_names
        for sample in family.samples:
            names.add(sample.name)
            for name in family_names | {sample.name}:
                labels.setdefault(name, set()).update(sample.labels)
    return names, labels


def test_live_scrape_has_every_metric_the_dashboard_and_rules_query(driven):
    """Every metric name in every dashboard and rules expression is in a live scrape, and the labels
    they match on are on its samples. Recording rules (names with colons) must be defined in the
    rules file; ``up`` is Prometheus' own.

    Exceptions, checked against the catalog table of docs/operations.md instead: the CUDA-only
    metrics (videoqa_gpu_memory_*, videoqa_turn_gpu_memory_peak_bytes) cannot appear on a CPU
    machine, and a family exported without any sample yet (a label-dependent series, e.g. Redis
    store errors while nothing failed) shows no labels to compare.
    """
    catalog, records = support.catalog(), support.recorded()
    histograms = {name for name, entry in catalog.items() if entry.type == "histogram"}
    names, labels = _scraped_names(driven.service.scrape())
    problems = []
    for where, expr in support.dashboard_exprs() + support.rule_exprs():
        for selector in support.selectors(expr):
            name = selector.name
            if ":" in name:
                if name not in records:
                    problems.append(f"{where}: recording rule {name} is not defined")
                continue
            if name in support.PROMETHEUS_SERIES:
                continue
            base = support.base_name(name, histograms)
            if support.is_cuda_only(base) and base not in names:
                if base not in catalog:
                    problems.append(f"{where}: CUDA-only {base} is not in the catalog")
                continue
            if name not in names and base not in names:
                problems.append(f"{where}: {name} is not in the live scrape")
                continue
            have = labels.get(name) or labels.get(base)
            if have:
                for label, _, _ in selector.matchers:
                    if label not in have and label not in support.TARGET_LABELS:
                        problems.append(f"{where}: {name} samples have no label {label!r} ({sorted(have)})")
    assert not problems, "\n".join(problems)


def test_prometheus_reads_back_the_turns(driven):
    prometheus = driven.prometheus
    tokens = [len(answer.tokens) for answer in driven.answers]
    assert all(n >= 1 for n in tokens), tokens

    def equals(expected: float):
        # The last turns may not be scraped yet: wait for the value, not just a non-zero one.
        return lambda value: value == expected

    for turn, turns in (("first", 1), ("followup", 2)):
        prometheus.wait_for(f'sum(videoqa_time_to_first_token_seconds_count{{turn="{turn}"}})', equals(turns))
        assert prometheus.wait_for(f'sum(videoqa_time_to_first_token_seconds_sum{{turn="{turn}"}})') > 0
    # Decode latency: the gaps between tokens (turns of two or more tokens), and generation time.
    gaps = sum(n - 1 for n in tokens)
    if gaps:
        prometheus.wait_for("sum(videoqa_inter_token_latency_seconds_count)", equals(gaps))
        assert prometheus.wait_for("sum(videoqa_inter_token_latency_seconds_sum)") > 0
    prometheus.wait_for("sum(videoqa_generation_seconds_count)", equals(len(tokens)))
    prometheus.wait_for("sum(videoqa_generated_tokens_total)", equals(sum(tokens)))
    # KV bytes of the new session before and after pruning (das keeping half the visual tokens).
    full = prometheus.wait_for('sum(videoqa_kv_cache_bytes_sum{state="full", method="das"})')
    compressed = prometheus.wait_for('sum(videoqa_kv_cache_bytes_sum{state="compressed", method="das"})')
    assert 0 < compressed < full
    ratio = prometheus.wait_for('sum(videoqa_kv_compression_ratio_sum{method="das"})')
    assert ratio == pytest.approx(compressed / full, rel=1e-6)
    # Both follow-ups found the session; the unknown one did not.
    prometheus.wait_for('sum(videoqa_session_lookups_total{result=~"hit-.*"})', equals(2))
    prometheus.wait_for('sum(videoqa_requests_total{component="frontend", rpc="Ask", code="NOT_FOUND"})', equals(1))


def test_recording_rules_on_real_series(driven):
    prometheus = driven.prometheus
    # Hits rose between scrapes, so the 5m rate is positive; the NOT_FOUND lookup was a miss.
    hit_ratio = prometheus.wait_for("max(videoqa:session_cache_hit_ratio:rate5m)", timeout=60)
    assert 0 < hit_ratio <= 1
    p99 = prometheus.wait_for('max(videoqa:time_to_first_token_seconds:p99_5m{turn="followup"})', timeout=60)
    assert 0 < p99 <= 300
    assert prometheus.wait_for("sum(videoqa:generated_tokens:rate5m)", timeout=60) > 0
    # No rule fails to evaluate on the real series (label clashes, many-to-many matches, ...).
    deadline = time.monotonic() + 30
    while True:
        rules = [rule for group in prometheus.api("/api/v1/rules")["groups"] for rule in group["rules"]]
        if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    # No alert fires on a healthy service.
    firing = [alert for alert in prometheus.api("/api/v1/alerts")["alerts"] if alert["state"] == "firing"]
    assert firing == []


def test_every_dashboard_query_runs_on_real_series(driven):
    errors = []
    answered = 0
    for where, expr in support.dashboard_exprs():
        promql = support.grafana_to_promql(expr)
        if promql is None:
            continue
        try:
            answered += bool(driven.prometheus.query(promql))
        except support.PromQLError as error:
            errors.append(f"{where}: {error}")
    assert not errors, "\n".join(errors)
    assert answered > 0
