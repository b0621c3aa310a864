"""Helpers for the observability tests: the dashboard's and rules' expressions, the metric catalog
of docs/operations.md, PromQL name extraction, and real Prometheus/promtool binaries."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests import preflight

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "videoqa" / "files" / "grafana-dashboard.json"
RULES = ROOT / "helm" / "videoqa" / "files" / "prometheus-rules.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Labels Prometheus attaches to every scraped series (target labels), usable in any expression.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
#: Exported only when CUDA is present: a CPU machine cannot show them in a live scrape.
CUDA_ONLY = {
    "videoqa_gpu_memory_allocated_bytes",
    "videoqa_gpu_memory_reserved_bytes",
    "videoqa_gpu_memory_total_bytes",
}
CUDA_ONLY_PREFIXES = ("videoqa_gpu_memory_", "videoqa_turn_gpu_memory_")
#: Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def binary(name: str) -> str:
    """The path of a Prometheus binary; skipped when missing in an ad-hoc run, a failure under
    `make test` and in CI (see tests/preflight.py)."""
    return preflight.require(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------ expressions


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def walk_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_exprs(board: dict | None = None) -> list[tuple[str, str]]:
    """``(where, expr)`` for every panel target and every templating query of the dashboard."""
    board = board if board is not None else dashboard()
    found = []
    for panel in walk_panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel.get('title')!r}", target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if query:
            found.append((f"variable ${variable['name']}", query))
    return found


def rule_exprs(doc: dict | None = None) -> list[tuple[str, str]]:
    doc = doc if doc is not None else rules()
    return [
        (f"rule {rule.get('record') or rule.get('alert')}", str(rule["expr"]))
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def recorded(doc: dict | None = None) -> dict[str, str]:
    """Recording rule name -> its expression."""
    doc = doc if doc is not None else rules()
    return {rule["record"]: str(rule["expr"]) for group in doc["groups"] for rule in group["rules"] if "record" in rule}


def grafana_to_promql(expr: str) -> str | None:
    """A dashboard expression as plain PromQL (variables substituted); ``None`` for label_values
    queries without a metric. ``label_values(metric{...}, label)`` becomes the selector."""
    expr = expr.strip()
    match = re.fullmatch(r"label_values\((.*)\)", expr, flags=re.S)
    if match:
        args = match.group(1)
        if "," not in _strip_strings(args):
            return None
        expr = args[: args.rindex(",")]
    match = re.fullmatch(r"query_result\((.*)\)", expr, flags=re.S)
    if match:
        expr = match.group(1)
    for interval in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(interval, "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


@dataclass
class Selector:
    """A vector selector: the metric name and its label matchers ``(label, op, value)``."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL (or Grafana) expression."""
    promql = grafana_to_promql(expr)
    if promql is None:
        return []
    # Pull matchers out first (their values may contain anything), keyed by a placeholder.
    matcher_blocks: list[str] = []

    def keep(match: re.Match) -> str:
        matcher_blocks.append(match.group(0))
        return f" __M{len(matcher_blocks) - 1}__ "

    text = re.sub(r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}', keep, promql)
    text = _strip_strings(text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"(?<![\w:])\d[\w.]*", " ", text)  # numbers and durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = []
    for match in re.finditer(rf"({_IDENT})(\s*__M(\d+)__)?(\s*\()?", text):
        name, block, is_call = match.group(1), match.group(3), match.group(4)
        if is_call or name in _KEYWORDS or name.lower() in _KEYWORDS or re.fullmatch(r"__M\d+__", name):
            continue
        if re.fullmatch(r"\d.*", name):
            continue
        matchers = []
        if block is not None:
            body = matcher_blocks[int(block)][1:-1]
            for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body):
                matchers.append((m.group(1), m.group(2), m.group(3)))
        found.append(Selector(name, matchers))
    # A bare selector ``{__name__="..."}`` is not used here; numbers were never identifiers.
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""
    promql = grafana_to_promql(expr) or ""
    labels: set[str] = set()
    for clause in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", promql):
        labels.update(label.strip() for label in clause.group(1).split(",") if label.strip())
    return labels


def metric_names(expr: str) -> set[str]:
    return {selector.name for selector in selectors(expr)}


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def base_name(name: str, histograms: set[str]) -> str:
    """``x_bucket``/``x_sum``/``x_count`` -> ``x`` when ``x`` is a histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------------ catalog


@dataclass
class CatalogEntry:
    name: str
    type: str
    #: label -> its documented values (empty: any value).
    labels: dict[str, list[str]]


def catalog() -> dict[str, CatalogEntry]:
    """The metric table of docs/operations.md."""
    entries = {}
    for line in OPERATIONS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`videoqa_\w+`", cells[0]):
            continue
        name, kind, label_text = cells[0].strip("`"), cells[1].split()[0], cells[2]
        labels: dict[str, list[str]] = {}
        for label, values in re.findall(r"(\w+)(?:\s*\(([^)]*)\))?", label_text):
            labels[label] = [v.strip() for v in values.split(",")] if values else []
        entries[name] = CatalogEntry(name, kind, labels)
    return entries


def is_cuda_only(name: str) -> bool:
    return name in CUDA_ONLY or name.startswith(CUDA_ONLY_PREFIXES)


# ------------------------------------------------------------------------------------ Prometheus


class Prometheus:
    """A real Prometheus server on a loopback port (scrape and evaluation every second)."""

    def __init__(self, directory: Path, targets: list[str], rule_files: list[Path] = (), job: str = "videoqa"):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": targets, "labels": {"namespace": "test"}}],
                }
            ],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def api(self, path: str, **params: str) -> dict:
        """GET an API path; returns the ``data`` of a success, raises with Prometheus' error."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (``None`` when it returns nothing)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, predicate=lambda v: v is not None and v > 0, timeout: float = 60) -> float:
        """Poll ``expr`` until ``predicate(value)`` holds; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if predicate(last):
                return last
            time.sleep(0.5)
        raise TimeoutError(f"{expr} never satisfied the condition within {timeout} s (last value {last})")


class PromQLError(Exception):
    pass
