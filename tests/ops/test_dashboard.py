"""The Grafana dashboard and the rules, checked without a running videoqa: structure, metric names
and labels against the catalog of docs/operations.md, and every expression parsed and evaluated by
a real Prometheus (the rules loaded into it too)."""

from __future__ import annotations

import re
import time

import grpc
import pytest

from tests.ops import support

#: Values of the labels the catalog describes in its introduction rather than in the table.
INTRO_LABEL_VALUES = {"component": ["frontend", "worker"], "turn": ["first", "followup"]}


def all_exprs() -> list[tuple[str, str]]:
    return support.dashboard_exprs() + support.rule_exprs()


# ------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (le, turn) "
            '(rate(videoqa_time_to_first_token_seconds_bucket{model=~"$model"}[$__rate_interval])))',
            {"videoqa_time_to_first_token_seconds_bucket"},
        ),
        (
            'sum(rate(x_total{result=~"hit-.*"}[5m])) / ignoring(result) group_left sum without (a, b) (rate(y[1m]))',
            {"x_total", "y"},
        ),
        (
            "max(videoqa:request_errors:ratio_rate5m) > bool 0.05 or on (job) vector(1e3)",
            {"videoqa:request_errors:ratio_rate5m"},
        ),
        ('absent(up{job=~".*videoqa.*"} == 1)', {"up"}),
        ("label_values(videoqa_model_info, model)", {"videoqa_model_info"}),
        (
            'label_values(videoqa_turn_duration_seconds_count{model=~"$model"}, method)',
            {"videoqa_turn_duration_seconds_count"},
        ),
        ("label_values(model)", set()),
        ('a offset 5m + b{c="{not a name}"} @ 100', {"a", "b"}),
    ],
)
def test_metric_name_extraction(expr, names):
    assert support.metric_names(expr) == names


def test_selector_matchers_and_grouping():
    expr = 'sum by (method) (rate(videoqa_kv_cache_bytes_sum{model=~"$model", state="full"}[5m]))'
    (selector,) = support.selectors(expr)
    assert selector.name == "videoqa_kv_cache_bytes_sum"
    assert selector.matchers == [("model", "=~", ".*"), ("state", "=", "full")]
    assert support.grouping_labels(expr) == {"method"}


def test_catalog_is_parsed():
    catalog = support.catalog()
    assert len(catalog) >= 30
    assert catalog["videoqa_requests_total"].labels == {"component": [], "rpc": [], "code": []}
    assert catalog["videoqa_kv_cache_bytes"].type == "histogram"
    assert catalog["videoqa_kv_cache_bytes"].labels["state"] == ["full", "compressed"]
    assert "hit-hot" in catalog["videoqa_session_lookups_total"].labels["result"]
    text = support.OPERATIONS.read_text()
    assert "`component` (frontend|worker)" in text and "`turn` (first" in text and "followup" in text


# ------------------------------------------------------------------------------------ the dashboard


def test_dashboard_structure():
    board = support.dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model = variables["model"]["query"]
    assert (model["query"] if isinstance(model, dict) else model) == "label_values(videoqa_model_info, model)"
    assert variables["method"]["type"] == "query"
    ids = []
    panels = list(support.walk_panels(board["panels"]))
    for panel in panels:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert "[5m]" not in target["expr"] or ":" in target["expr"], (
                f"{panel['title']}: use [$__rate_interval] in panels"
            )
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert any(panel["type"] == "row" and panel.get("panels") for panel in board["panels"]), "a collapsed row"


def _panels_using(*names: str) -> list[str]:
    """Titles of panels whose expressions use all of ``names`` (metric names or substrings)."""
    found = []
    for panel in support.walk_panels(support.dashboard()["panels"]):
        exprs = " ".join(target.get("expr", "") for target in panel.get("targets", []))
        if all(name in exprs for name in names):
            found.append(panel["title"])
    return found


@pytest.mark.parametrize(
    "needles",
    [
        (
            "histogram_quantile(0.5",
            "histogram_quantile(0.9",
            "histogram_quantile(0.99",
            "time_to_first_token_seconds_bucket",
            "turn",
        ),
        ("histogram_quantile", "inter_token_latency_seconds_bucket"),
        ("rate(videoqa_generated_tokens_total",),
        (
            "videoqa_prefill_seconds_sum",
            "videoqa_prefill_seconds_count",
            "videoqa_prune_seconds_sum",
            "videoqa_generation_seconds_sum",
        ),
        ('videoqa_kv_cache_bytes_sum{model=~"$model", method=~"$method", state="full"}', 'state="compressed"'),
        ("videoqa_kv_compression_ratio_sum", "by (method)"),
        ("videoqa_visual_tokens_total", "state"),
        ('videoqa_session_lookups_total{result=~"hit-.*"}',),
        ('videoqa_session_store_seconds_bucket{backend="redis"}', "op"),
        ("videoqa_session_store_errors_total",),
        ("videoqa_gpu_memory_allocated_bytes", "videoqa_gpu_memory_reserved_bytes"),
        ("videoqa_turn_gpu_memory_peak_bytes_bucket",),
        ("videoqa_turns_queued", "videoqa_turns_running", "videoqa_requests_in_flight"),
        ("videoqa_requests_total", "by (rpc, code)"),
        ("videoqa_requests_total", "by (code)"),
        ("videoqa_sessions_active", "videoqa_sessions_stored", "videoqa_sessions_evicted_total"),
        ("videoqa_build_info",),
        ("videoqa_model_info",),
        ("$__rate_interval",),
    ],
)
def test_dashboard_has_the_panels_operators_need(needles):
    assert _panels_using(*needles), f"no panel queries {needles}"


def test_info_panels_are_tables():
    for panel in support.walk_panels(support.dashboard()["panels"]):
        exprs = " ".join(target.get("expr", "") for target in panel.get("targets", []))
        if "_info" in exprs:
            assert panel["type"] == "table" and all(t["instant"] for t in panel["targets"]), panel["title"]


# ------------------------------------------------------------------------------------ names and labels


def _rule_labels() -> dict[str, set[str]]:
    """Output labels of each recording rule (its grouping, or its sources' labels)."""
    catalog, out = support.catalog(), {}
    histograms = {name for name, entry in catalog.items() if entry.type == "histogram"}
    for name, expr in support.recorded().items():
        grouping = support.grouping_labels(expr) - {"le"}
        if re.search(r"\b(?:sum|max|min|avg|count)\s+by\b|\bby\s*\(", expr):
            out[name] = grouping
        else:
            labels: set[str] = set(support.TARGET_LABELS)
            for selector in support.selectors(expr):
                entry = catalog.get(support.base_name(selector.name, histograms))
                labels |= set(entry.labels) if entry else set()
            out[name] = labels
    return out


def _available_labels(name: str) -> tuple[set[str], dict[str, list[str]]] | None:
    """Labels (and their documented values) that series ``name`` can carry; None if unknown."""
    catalog = support.catalog()
    histograms = {n for n, entry in catalog.items() if entry.type == "histogram"}
    if ":" in name:
        labels = _rule_labels().get(name)
        return (labels, dict(INTRO_LABEL_VALUES)) if labels is not None else None
    if name in support.PROMETHEUS_SERIES:
        return set(support.TARGET_LABELS), {}
    base = support.base_name(name, histograms)
    entry = catalog.get(base)
    if entry is None:
        return None
    labels = set(entry.labels) | support.TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
    values = {**INTRO_LABEL_VALUES, **{label: v for label, v in entry.labels.items() if v}}
    return labels, values


def _rpc_names() -> set[str]:
    from videoqa.internal.v1 import worker_pb2
    from videoqa.v1 import videoqa_pb2

    names = set()
    for module in (videoqa_pb2, worker_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names.update(method.name for method in service.methods)
    return names


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=[where for where, _ in all_exprs()])
def test_names_and_labels_match_the_catalog(where, expr):
    """Every metric is in the catalog (histograms by their _bucket/_sum/_count series) or is a
    recording rule of the rules file; every label matcher and grouping label exists on the metrics
    queried, with a documented value; code and rpc values are real gRPC status and method names."""
    catalog, records = support.catalog(), support.recorded()
    histograms = {name for name, entry in catalog.items() if entry.type == "histogram"}
    status_names = {code.name for code in grpc.StatusCode}
    rpcs = _rpc_names()
    reachable = set(support.TARGET_LABELS)
    for selector in support.selectors(expr):
        name = selector.name
        if ":" in name:
            assert name in records, f"{where}: {name} looks like a recording rule but the rules file does not define it"
        elif name not in support.PROMETHEUS_SERIES:
            assert support.base_name(name, histograms) in catalog, f"{where}: {name} is not in docs/operations.md"
            if name.endswith(support.HISTOGRAM_SUFFIXES) and name not in catalog:
                assert support.base_name(name, histograms) in histograms, f"{where}: {name}: not a histogram"
        if name in catalog and catalog[name].type == "histogram":
            pytest.fail(f"{where}: {name} is a histogram: query its _bucket, _sum or _count series")
        available = _available_labels(name)
        assert available is not None, f"{where}: no labels known for {name}"
        labels, values = available
        reachable |= labels
        for label, op, value in selector.matchers:
            assert label in labels, f"{where}: {name} has no label {label!r} (it has {sorted(labels)})"
            if op in ("=", "=~") and value != ".*":
                pattern = re.escape(value) if op == "=" else value
                if label == "code":
                    assert all(part in status_names for part in value.split("|")), f"{where}: {label}={value!r}"
                elif label == "rpc":
                    assert all(part in rpcs for part in value.split("|")), f"{where}: {label}={value!r}"
                elif values.get(label):
                    assert any(re.fullmatch(pattern, v) for v in values[label]), (
                        f"{where}: {name}{{{label}{op}{value!r}}} matches none of {values[label]}"
                    )
            if label == "code" and op in ("!=", "!~"):
                assert all(part in status_names for part in value.split("|")), f"{where}: {label}{op}{value!r}"
    missing = support.grouping_labels(expr) - reachable - {"le"}
    assert not missing, f"{where}: grouping by labels no queried metric has: {sorted(missing)}"


# ------------------------------------------------------------------------------------ a real Prometheus


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus with the rules loaded and nothing to scrape."""
    server = support.Prometheus(tmp_path_factory.mktemp("prometheus"), targets=[], rule_files=[support.RULES])
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=[where for where, _ in all_exprs()])
def test_prometheus_evaluates_every_expression(prometheus, where, expr):
    promql = support.grafana_to_promql(expr)
    if promql is None:
        return
    try:
        prometheus.query(promql)
    except support.PromQLError as error:
        pytest.fail(f"{where}: {error}")


def test_prometheus_loads_the_rules(prometheus):
    expected = sum(len(group["rules"]) for group in support.rules()["groups"])
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("/api/v1/rules")["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        if len(loaded) == expected and all(rule["health"] != "unknown" for rule in loaded):
            break
        assert time.monotonic() < deadline, f"rules not evaluated: {loaded}\n{prometheus.logs()}"
        time.sleep(0.3)
    assert [rule for rule in loaded if rule["health"] != "ok"] == []
