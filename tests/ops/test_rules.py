"""The Prometheus rules file: `promtool check rules`, and `promtool test rules` with synthetic series
proving that recording rules compute what they claim and that alerts fire (and stay quiet)."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.ops import support

SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([support.binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules():
    result = promtool("check", "rules", str(support.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_follow_the_conventions():
    doc = support.rules()
    assert set(doc) == {"groups"}, "a plain rules file: only `groups:` (the chart embeds them in a PrometheusRule)"
    names = [group["name"] for group in doc["groups"]]
    assert len(names) == len(set(names))
    records, alerts = [], []
    for group in doc["groups"]:
        for rule in group["rules"]:
            (records if "record" in rule else alerts).append(rule)
    assert records and alerts
    for rule in records:
        # level:metric:operations; colons are reserved for recording rules.
        assert re.fullmatch(r"videoqa:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
    for name in ("time_to_first_token_seconds:p99_5m", "session_cache_hit_ratio:rate5m"):
        assert f"videoqa:{name}" in {rule["record"] for rule in records}
    for name in ("kv_compression_ratio:avg5m", "request_errors:ratio_rate5m"):
        assert f"videoqa:{name}" in {rule["record"] for rule in records}
    for rule in alerts:
        assert re.fullmatch(r"VideoQA[A-Za-z0-9]+", rule["alert"]), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    assert len({rule["alert"] for rule in alerts}) == len(alerts)


# --------------------------------------------------------------------------------- promtool test


def go_humanize(value: float) -> str:
    """Prometheus' ``humanize`` for the values these tests produce (0, or 1 to 999)."""
    if value == 0 or 1 <= abs(value) < 1000:
        return f"{value:.4g}"
    raise NotImplementedError(f"humanize({value}) is not emulated here: choose test values in [1, 1000)")


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The alert annotation Prometheus would produce (the subset of Go templates the rules use)."""
    out = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    out = re.sub(r"\{\{\s*\$value\s*\|\s*humanizePercentage\s*\}\}", lambda m: go_humanize(value * 100) + "%", out)
    out = re.sub(r"\{\{\s*\$value\s*\|\s*humanize\s*\}\}", lambda m: go_humanize(value), out)
    assert "{{" not in out, f"template not emulated: {out}"
    return out


def expected_alert(name: str, labels: dict[str, str], value: float) -> dict:
    rule = next(rule for group in support.rules()["groups"] for rule in group["rules"] if rule.get("alert") == name)
    all_labels = {**labels, **rule["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {key: render(text, labels, value) for key, text in rule["annotations"].items()},
    }


def series(name: str, values: str, **labels: str) -> dict:
    body = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def test_promtool_unit_tests(tmp_path):
    """Synthetic series at 1-minute steps: exact rates, so exact ratios."""
    prod = {"job": "videoqa", "namespace": "prod"}
    frontend = {**prod, "component": "frontend", "rpc": "Ask"}
    store = {**prod, "backend": "redis", "op": "load"}
    tests = [
        {
            # 30 + 15 hits and 15 misses per minute: hit ratio 0.75; corrupt stays 0.
            "interval": "1m",
            "input_series": [
                series("videoqa_session_lookups_total", "0+30x20", result="hit-hot", **prod),
                series("videoqa_session_lookups_total", "0+15x20", result="hit-redis", **prod),
                series("videoqa_session_lookups_total", "0+15x20", result="miss", **prod),
                series("videoqa_session_lookups_total", "0x20", result="corrupt", **prod),
            ],
            "promql_expr_test": [
                {
                    "expr": "videoqa:session_cache_hit_ratio:rate5m",
                    "eval_time": "10m",
                    "exp_samples": [
                        {
                            "labels": 'videoqa:session_cache_hit_ratio:rate5m{job="videoqa",namespace="prod"}',
                            "value": 0.75,
                        }
                    ],
                }
            ],
            "alert_rule_test": [{"eval_time": "10m", "alertname": "VideoQASessionCorrupt", "exp_alerts": []}],
        },
        {
            # Public RPCs: 48 OK, 6 NOT_FOUND (client error, excluded), 6 INTERNAL per minute: 10% server errors.
            # The worker's internal RPCs (component="worker") are not public and must not count.
            "interval": "1m",
            "input_series": [
                series("videoqa_requests_total", "0+48x40", code="OK", **frontend),
                series("videoqa_requests_total", "0+6x40", code="NOT_FOUND", **frontend),
                series("videoqa_requests_total", "0+6x40", code="INTERNAL", **frontend),
                series("videoqa_requests_total", "0+600x40", **{**frontend, "component": "worker", "code": "INTERNAL"}),
            ],
            "promql_expr_test": [
                {
                    "expr": "videoqa:request_errors:ratio_rate5m",
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": 'videoqa:request_errors:ratio_rate5m{job="videoqa",namespace="prod"}', "value": 0.1}
                    ],
                }
            ],
            "alert_rule_test": [
                # `for: 10m`: pending at 5m, firing by 20m.
                {"eval_time": "5m", "alertname": "VideoQAHighErrorRatio", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "VideoQAHighErrorRatio",
                    "exp_alerts": [expected_alert("VideoQAHighErrorRatio", prod, 0.1)],
                },
            ],
        },
        {
            # Only client errors: no alert.
            "interval": "1m",
            "input_series": [
                series("videoqa_requests_total", "0+10x40", code="OK", **frontend),
                series("videoqa_requests_total", "0+50x40", code="INVALID_ARGUMENT", **frontend),
                series("videoqa_requests_total", "0+50x40", code="UNAUTHENTICATED", **frontend),
            ],
            "alert_rule_test": [{"eval_time": "30m", "alertname": "VideoQAHighErrorRatio", "exp_alerts": []}],
        },
        {
            # Redis loads failing 2/s, and one corrupt record seen.
            "interval": "1m",
            "input_series": [
                series("videoqa_session_store_errors_total", "0+120x20", **store),
                series("videoqa_session_lookups_total", "0 0 0 1 1 1 1 1 1 1", result="corrupt", **prod),
            ],
            "promql_expr_test": [
                {
                    "expr": "videoqa:session_store_errors:rate5m",
                    "eval_time": "10m",
                    "exp_samples": [
                        {
                            "labels": 'videoqa:session_store_errors:rate5m{backend="redis",job="videoqa",'
                            'namespace="prod",op="load"}',
                            "value": 2,
                        }
                    ],
                }
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "VideoQASessionStoreErrors", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "VideoQASessionStoreErrors",
                    "exp_alerts": [expected_alert("VideoQASessionStoreErrors", store, 2)],
                },
                {
                    "eval_time": "6m",
                    "alertname": "VideoQASessionCorrupt",
                    "exp_alerts": [expected_alert("VideoQASessionCorrupt", prod, 1)],
                },
            ],
        },
        {
            # Frontend and worker are different scrape jobs: requests arrive, no turn completes.
            "interval": "1m",
            "input_series": [
                series(
                    "videoqa_requests_total",
                    "0+10x40",
                    **{**frontend, "job": "videoqa-frontend", "rpc": "CreateSession", "code": "UNAVAILABLE"},
                ),
                series("videoqa_turns_total", "0x40", job="videoqa-worker", namespace="prod", outcome="completed"),
                series("up", "1x40", job="videoqa-frontend", namespace="prod", instance="fe:9464"),
                series("up", "0x40", job="videoqa-worker", namespace="prod", instance="w:9464"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "VideoQANoWorkerServing",
                    "exp_alerts": [expected_alert("VideoQANoWorkerServing", {"namespace": "prod"}, 1)],
                },
                {
                    "eval_time": "30m",
                    "alertname": "VideoQATargetDown",
                    "exp_alerts": [
                        expected_alert(
                            "VideoQATargetDown", {"job": "videoqa-worker", "namespace": "prod", "instance": "w:9464"}, 0
                        )
                    ],
                },
                {"eval_time": "30m", "alertname": "VideoQANoTargetUp", "exp_alerts": []},
            ],
        },
        {
            # Same traffic, but turns complete: quiet.
            "interval": "1m",
            "input_series": [
                series("videoqa_requests_total", "0+10x40", **{**frontend, "job": "videoqa-frontend", "code": "OK"}),
                series("videoqa_turns_total", "0+10x40", job="videoqa-worker", namespace="prod", outcome="completed"),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "VideoQANoWorkerServing", "exp_alerts": []},
                # No `up` series for any videoqa job at all.
                {
                    "eval_time": "30m",
                    "alertname": "VideoQANoTargetUp",
                    "exp_alerts": [expected_alert("VideoQANoTargetUp", {}, 1)],
                },
            ],
        },
        {
            # Follow-up TTFT: per minute 10 observations in (5, 10] s and 10 in (10, 20] s, so the
            # median is 10 s and p99 is 19.8 s (linear inside the bucket): above the 10 s threshold.
            "interval": "1m",
            "input_series": [
                series(
                    "videoqa_time_to_first_token_seconds_bucket",
                    values,
                    le=le,
                    model="m",
                    method="das",
                    turn="followup",
                    **prod,
                )
                for le, values in (("5", "0x40"), ("10", "0+10x40"), ("20", "0+20x40"), ("+Inf", "0+20x40"))
            ],
            "promql_expr_test": [
                {
                    "expr": "videoqa:time_to_first_token_seconds:p50_5m",
                    "eval_time": "10m",
                    # half of the observations are <= 10 s: the median is the bucket edge, 10 s.
                    "exp_samples": [
                        {
                            "labels": 'videoqa:time_to_first_token_seconds:p50_5m{model="m",namespace="prod",'
                            'turn="followup"}',
                            "value": 10,
                        }
                    ],
                }
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "VideoQAFollowupTTFTHigh",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "model": "m",
                                "namespace": "prod",
                                "turn": "followup",
                                "severity": "warning",
                            },
                            "exp_annotations": _annotations_with_value("VideoQAFollowupTTFTHigh", "19.8s"),
                        }
                    ],
                },
                {"eval_time": "30m", "alertname": "VideoQAFirstTurnTTFTHigh", "exp_alerts": []},
            ],
        },
    ]
    unit = tmp_path / "rules-test.yaml"
    unit.write_text(
        yaml.safe_dump(
            {"rule_files": [str(support.RULES)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
        )
    )
    result = promtool("test", "rules", str(unit), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _annotations_with_value(name: str, duration: str) -> dict:
    labels = {"model": "m", "namespace": "prod", "turn": "followup"}
    rule = next(rule for group in support.rules()["groups"] for rule in group["rules"] if rule.get("alert") == name)
    out = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{\s*\$value\s*\|\s*humanizeDuration\s*\}\}", duration, text)
        out[key] = render(text, labels, 0)
    return out
