"""The chart lints and renders with the real helm 3 binary, and the manifests are what we expect.

Default values (a CPU trial of the split deployment) and every profile in helm/videoqa/ci/ (the
production-like GPU profile included) must pass `helm lint --strict` and `helm template`; the
rendered manifests are parsed and checked against the service's contract (docs/operations.md).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import preflight

CHART = Path(__file__).resolve().parents[1] / "helm" / "videoqa"
PRODUCTION = CHART / "ci" / "production-values.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def helm_binary() -> str:
    candidates = [os.environ.get("VIDEOQA_HELM"), str(Path(sys.executable).parent / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    if preflight.strict():
        pytest.fail("no helm binary (`make helm` fetches it; `make test` does so first)", pytrace=False)
    pytest.skip("no helm binary (run `make helm`)")


@functools.cache
def _render(args: tuple[str, ...]) -> tuple[dict, ...]:
    helm = helm_binary()
    lint = subprocess.run([helm, "lint", "--strict", str(CHART), *args], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", "t", str(CHART), "--namespace", "vqa", *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(*args: str) -> list[dict]:
    """Lint (strict) and render the chart with these helm arguments; the parsed manifests."""
    return list(_render(args))


def render_error(*args: str) -> str:
    """Render the chart expecting a failure; helm's error output."""
    out = subprocess.run([helm_binary(), "template", "t", str(CHART), *args], capture_output=True, text=True)
    assert out.returncode != 0, out.stdout
    return out.stderr


def production(*args: str) -> list[dict]:
    return render("-f", str(PRODUCTION), *args)


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def pod(docs: list[dict], name: str) -> dict:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, object]:
    """name -> value (or the valueFrom mapping)."""
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env vars in {container['name']}: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            yield doc, doc["spec"]["template"]["spec"]


def secret_file(pod_spec: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) that a file path inside the container comes from, through its mounts."""
    for mount in container.get("volumeMounts", []):
        if posixpath.dirname(path) == mount["mountPath"].rstrip("/"):
            assert mount.get("readOnly") is True, mount
            volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
            secret = volume["secret"]
            keys = {item["path"]: item["key"] for item in secret.get("items", [])}
            return secret["secretName"], keys.get(posixpath.basename(path), posixpath.basename(path))
    raise AssertionError(f"{path} is not on any mount of {container['name']}")


# --- every profile -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "default" if v is None else v.name)
def test_profiles_lint_and_render(values):
    docs = render(*(["-f", str(values)] if values else []))
    kinds = {d["kind"] for d in docs}
    assert "Service" in kinds and "Deployment" in kinds
    assert PRODUCTION in CI_VALUES


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_no_pod_or_container_runs_as_root(values):
    docs = render(*(["-f", str(values)] if values else []))
    pods = list(pod_specs(docs))
    assert len(pods) >= 2
    for doc, spec in pods:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0, where
        assert ctx.get("runAsGroup", 1) != 0, where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"] + spec.get("initContainers", []):
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False, where
            assert c["readOnlyRootFilesystem"] is True, where
            assert c["capabilities"]["drop"] == ["ALL"], where
            assert c.get("runAsUser", 1) != 0 and c.get("privileged", False) is False, where
            # read-only root: /tmp is a volume
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_termination_grace_exceeds_the_drain_grace(values):
    docs = render(*(["-f", str(values)] if values else []))
    checked = 0
    for doc, spec in pod_specs(docs):
        for container in spec["containers"]:
            grace = env_of(container).get("VIDEOQA_GRACE_S")
            if grace is not None:
                assert spec["terminationGracePeriodSeconds"] > float(grace), doc["metadata"]["name"]
                checked += 1
    assert checked == 2  # frontend and worker


# --- default values: a CPU trial ----------------------------------------------------------------


def test_default_values_render_a_cpu_trial_of_the_split_deployment():
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("Deployment", "t-videoqa-frontend"),
        ("Deployment", "t-videoqa-worker"),
        ("PodDisruptionBudget", "t-videoqa-frontend"),
        ("PodDisruptionBudget", "t-videoqa-worker"),
        ("Service", "t-videoqa"),
        ("Service", "t-videoqa-redis"),
        ("Service", "t-videoqa-worker"),
        ("ServiceAccount", "t-videoqa"),
        ("StatefulSet", "t-videoqa-redis"),
    ]
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert worker["args"] == ["worker", "--listen=0.0.0.0:50061"]
    env = env_of(worker)
    assert json.loads(env["VIDEOQA_MODELS"]) == ["videoqa-demo"]
    assert (env["VIDEOQA_DEVICE"], env["VIDEOQA_DTYPE"]) == ("cpu", "float32")
    assert env["VIDEOQA_METRICS_LISTEN"] == "0.0.0.0:9464"
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})
    (frontend,) = pod(docs, "t-videoqa-frontend")["containers"]
    # the trial is explicitly insecure, and says so
    assert env_of(frontend)["VIDEOQA_INSECURE"] == "true"
    assert "VIDEOQA_INSECURE" not in env
    public = one(docs, "Service", "t-videoqa")
    assert {p["name"]: p["port"] for p in public["spec"]["ports"]} == {"grpc": 50051, "metrics": 9464}
    assert public["spec"]["selector"]["app.kubernetes.io/component"] == "frontend"


def test_frontend_finds_workers_through_the_headless_service():
    for docs in (render(), production()):
        (frontend,) = pod(docs, "t-videoqa-frontend")["containers"]
        assert frontend["args"] == [
            "frontend",
            "--listen=0.0.0.0:50051",
            "--worker=dns:t-videoqa-worker.vqa.svc.cluster.local:50061",
        ]
        headless = one(docs, "Service", "t-videoqa-worker")
        assert headless["spec"]["clusterIP"] == "None"
        assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"grpc": 50061, "metrics": 9464}
        worker_labels = one(docs, "Deployment", "t-videoqa-worker")["spec"]["template"]["metadata"]["labels"]
        assert headless["spec"]["selector"].items() <= worker_labels.items()
    custom = render("--set", "clusterDomain=k8s.example", "--set", "worker.port=50071")
    assert pod(custom, "t-videoqa-frontend")["containers"][0]["args"][2] == (
        "--worker=dns:t-videoqa-worker.vqa.svc.k8s.example:50071"
    )


def grpc_probes(container: dict) -> dict[str, tuple[int, str]]:
    probes = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            assert set(container[kind]) - {"grpc"} <= {
                "periodSeconds",
                "timeoutSeconds",
                "failureThreshold",
                "initialDelaySeconds",
                "successThreshold",
            }, kind
            probes[kind] = (container[kind]["grpc"]["port"], container[kind]["grpc"]["service"])
    return probes


def test_probes_are_native_grpc_with_the_health_service_names():
    docs = render()
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert grpc_probes(worker) == {
        "startupProbe": (50061, ""),
        "readinessProbe": (50061, "videoqa.internal.v1.Worker"),
        "livenessProbe": (50061, "liveness"),
    }
    # model loading may take long: the startup probe allows at least ten minutes
    assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600
    (frontend,) = pod(docs, "t-videoqa-frontend")["containers"]
    assert grpc_probes(frontend) == {
        "readinessProbe": (50051, "videoqa.v1.VideoQA"),
        "livenessProbe": (50051, "liveness"),
    }
    # with TLS on the public port the kubelet (no TLS in gRPC probes) asks a plaintext health port
    (frontend,) = pod(production(), "t-videoqa-frontend")["containers"]
    assert grpc_probes(frontend) == {
        "readinessProbe": (50052, "videoqa.v1.VideoQA"),
        "livenessProbe": (50052, "liveness"),
    }
    assert env_of(frontend)["VIDEOQA_HEALTH_LISTEN"] == "0.0.0.0:50052"
    assert {"name": "health", "containerPort": 50052, "protocol": "TCP"} in frontend["ports"]
    (worker,) = pod(production(), "t-videoqa-worker")["containers"]
    assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 1800


# --- production values: GPUs, secrets, monitoring --------------------------------------------


def test_production_worker_requests_a_gpu_and_is_scheduled_on_gpu_nodes():
    docs = production()
    deployment = one(docs, "Deployment", "t-videoqa-worker")
    assert deployment["spec"]["replicas"] >= 2
    spec = deployment["spec"]["template"]["spec"]
    (worker,) = spec["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    env = env_of(worker)
    assert (env["VIDEOQA_DEVICE"], env["VIDEOQA_DTYPE"]) == ("cuda:0", "bfloat16")
    assert isinstance(json.loads(env["VIDEOQA_MODELS"]), list)
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    # writable model cache and shared memory on a read-only root
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert env["HF_HOME"].startswith("/var/cache/videoqa/")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/cache/videoqa"]]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_production_frontends_scale_with_an_hpa():
    docs = production()
    deployment = one(docs, "Deployment", "t-videoqa-frontend")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = one(docs, "HorizontalPodAutoscaler", "t-videoqa-frontend")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "t-videoqa-frontend",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "videoqa_requests_in_flight"
    for name in ("t-videoqa-frontend", "t-videoqa-worker"):
        assert one(docs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
    cpu_only = render("--set", "frontend.autoscaling.enabled=true")
    hpa = one(cpu_only, "HorizontalPodAutoscaler", "t-videoqa-frontend")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


def test_production_secrets_are_mounted_where_the_env_vars_say():
    docs = production()
    spec = pod(docs, "t-videoqa-frontend")
    (frontend,) = spec["containers"]
    env = env_of(frontend)
    assert "VIDEOQA_INSECURE" not in env
    expected = {
        "VIDEOQA_API_KEYS_FILE": ("videoqa-api-keys", "api-keys.json"),
        "VIDEOQA_TLS_CERT_FILE": ("videoqa-tls", "tls.crt"),
        "VIDEOQA_TLS_KEY_FILE": ("videoqa-tls", "tls.key"),
        "VIDEOQA_TLS_CLIENT_CA_FILE": ("videoqa-client-ca", "ca.crt"),
    }
    for var, source in expected.items():
        assert secret_file(spec, frontend, env[var]) == source, var
    # existing secrets: the chart renders none of its own
    assert not [d for d in docs if d["kind"] == "Secret"]
    # the worker holds no public credentials
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert not {"VIDEOQA_API_KEYS_FILE", "VIDEOQA_TLS_KEY_FILE"} & set(env_of(worker))


def test_api_keys_from_values_become_a_secret_and_client_ca_can_come_from_the_tls_secret():
    docs = render(
        "--set",
        "security.insecure=false",
        "--set",
        "security.apiKeys.enabled=true",
        "--set-json",
        'security.apiKeys.keys={"team-a": ["key-1", "key-2"], "team-b": "key-3"}',
        "--set",
        "security.tls.enabled=true",
        "--set",
        "security.tls.existingSecret=cert-manager-tls",
        "--set",
        "security.tls.clientCA.enabled=true",
    )
    secret = one(docs, "Secret", "t-videoqa-api-keys")
    assert json.loads(secret["stringData"]["api-keys.json"]) == {"team-a": ["key-1", "key-2"], "team-b": "key-3"}
    spec = pod(docs, "t-videoqa-frontend")
    (frontend,) = spec["containers"]
    env = env_of(frontend)
    assert secret_file(spec, frontend, env["VIDEOQA_API_KEYS_FILE"]) == ("t-videoqa-api-keys", "api-keys.json")
    assert secret_file(spec, frontend, env["VIDEOQA_TLS_CLIENT_CA_FILE"]) == ("cert-manager-tls", "ca.crt")
    assert secret_file(spec, frontend, env["VIDEOQA_TLS_CERT_FILE"]) == ("cert-manager-tls", "tls.crt")
    # a key change rolls the frontends
    annotations = one(docs, "Deployment", "t-videoqa-frontend")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/api-keys" in annotations


def test_rendering_fails_clearly_when_the_public_port_is_neither_secured_nor_explicitly_insecure():
    error = render_error("--set", "security.insecure=false")
    assert "neither API keys nor TLS" in error and "security.insecure=true" in error
    # half-configured security is refused too
    assert "security.apiKeys.existingSecret" in render_error(
        "--set", "security.insecure=false", "--set", "security.apiKeys.enabled=true"
    )
    assert "security.tls.existingSecret" in render_error(
        "--set", "security.insecure=false", "--set", "security.tls.enabled=true"
    )
    assert "mode" in render_error("--set", "mode=both")
    # the values schema refuses root and unknown dtypes before anything renders
    assert "runAsUser" in render_error("--set", "podSecurityContext.runAsUser=0")
    assert "worker.dtype" in render_error("--set", "worker.dtype=fp8")
    # insecure only when asked for, and not when something is configured anyway
    secured = render("--set", "security.apiKeys.enabled=true", "--set", "security.apiKeys.existingSecret=keys")
    assert "VIDEOQA_INSECURE" not in env_of(pod(secured, "t-videoqa-frontend")["containers"][0])


# --- Redis -------------------------------------------------------------------------------------


def redis_container(docs: list[dict]) -> dict:
    (container,) = one(docs, "StatefulSet", "t-videoqa-redis")["spec"]["template"]["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_bundled_redis_is_an_lru_cache_without_persistence():
    docs = render()
    redis = redis_container(docs)
    assert redis["image"] == "redis:7"
    args = redis["args"]
    assert flag(args, "--maxmemory") == "1gb"
    assert flag(args, "--maxmemory-policy") == "allkeys-lru"
    assert flag(args, "--save") == "" and flag(args, "--appendonly") == "no"
    assert "--requirepass" not in args
    statefulset = one(docs, "StatefulSet", "t-videoqa-redis")["spec"]["template"]["spec"]
    assert statefulset["securityContext"]["runAsUser"] == 999
    assert {m["mountPath"] for m in redis["volumeMounts"]} >= {"/data"}
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert env_of(worker)["VIDEOQA_REDIS_URL"] == "redis://t-videoqa-redis.vqa.svc.cluster.local:6379/0"
    assert "VIDEOQA_REDIS_PASSWORD" not in env_of(worker)
    assert flag(redis_container(render("--set", "redis.maxmemory=3gb"))["args"], "--maxmemory") == "3gb"


def test_redis_password_comes_from_a_secret():
    docs = production()
    redis = redis_container(docs)
    assert flag(redis["args"], "--requirepass") == "$(REDIS_PASSWORD)"
    ref = {"secretKeyRef": {"name": "videoqa-redis", "key": "redis-password"}}
    assert env_of(redis)["REDIS_PASSWORD"] == ref
    assert flag(redis["args"], "--save") == ""
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert env_of(worker)["VIDEOQA_REDIS_PASSWORD"] == ref
    # a password from values lands in a chart Secret
    docs = render("--set", "redis.auth.enabled=true", "--set", "redis.auth.password=s3cret")
    assert one(docs, "Secret", "t-videoqa-redis")["stringData"] == {"redis-password": "s3cret"}
    (worker,) = pod(docs, "t-videoqa-worker")["containers"]
    assert env_of(worker)["VIDEOQA_REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "t-videoqa-redis", "key": "redis-password"}
    }
    assert "redis.auth.existingSecret" in render_error("--set", "redis.auth.enabled=true")


def test_external_redis_or_none():
    docs = render(
        "--set",
        "redis.enabled=false",
        "--set",
        "redis.externalUrl=rediss://redis.example:6380/0",
        "--set",
        "redis.auth.enabled=true",
        "--set",
        "redis.auth.existingSecret=ext-redis",
        "--set",
        "redis.auth.existingSecretKey=password",
        "--set",
        "redis.caSecret=ext-redis-ca",
    )
    assert not [d for d in docs if "redis" in d["metadata"]["name"] and d["kind"] != "Secret"]
    spec = pod(docs, "t-videoqa-worker")
    (worker,) = spec["containers"]
    env = env_of(worker)
    assert env["VIDEOQA_REDIS_URL"] == "rediss://redis.example:6380/0"
    assert env["VIDEOQA_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "ext-redis", "key": "password"}}
    assert secret_file(spec, worker, env["VIDEOQA_REDIS_CA_CERTS"]) == ("ext-redis-ca", "ca.crt")
    cluster = env_of(
        pod(
            render(
                "--set",
                "redis.enabled=false",
                "--set",
                "redis.externalUrl=rediss+cluster://redis-0.example:6379",
                "--set",
                "redis.replicaAcks=1",
            ),
            "t-videoqa-worker",
        )["containers"][0]
    )
    assert cluster["VIDEOQA_REDIS_URL"] == "rediss+cluster://redis-0.example:6379"
    assert cluster["VIDEOQA_REDIS_REPLICA_ACKS"] == "1" and cluster["VIDEOQA_REDIS_TIMEOUT_S"] == "5"
    assert "externalUrl" in render_error("--set", "redis.enabled=false", "--set", "redis.externalUrl=http://x")
    docs = render("--set", "redis.enabled=false")
    assert not [d for d in docs if "redis" in d["metadata"]["name"]]
    assert not {k for k in env_of(pod(docs, "t-videoqa-worker")["containers"][0]) if "REDIS" in k}


# --- monitoring ----------------------------------------------------------------------------------


def test_prometheus_rule_groups_are_the_rules_file():
    rule = one(production(), "PrometheusRule", "t-videoqa")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expected = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]
    assert rule["spec"]["groups"] == (expected or [])


def test_dashboard_configmap_holds_the_dashboard_file():
    docs = production()
    configmap = one(docs, "ConfigMap", "t-videoqa-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = configmap["data"].values()
    text = (CHART / "files" / "grafana-dashboard.json").read_text()
    assert json.loads(content) == json.loads(text)
    assert content.strip() == text.strip()
    relabeled = render(
        "--set",
        "metrics.dashboard.enabled=true",
        "--set",
        "metrics.dashboard.label=dash",
        "--set",
        "metrics.dashboard.namespace=grafana",
    )
    configmap = one(relabeled, "ConfigMap", "t-videoqa-dashboard")
    assert configmap["metadata"]["labels"]["dash"] == "1" and configmap["metadata"]["namespace"] == "grafana"
    # all optional, off by default
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"} & {d["kind"] for d in render()}


def test_service_monitors_scrape_frontend_and_worker_metrics_ports():
    docs = production()
    services = [d for d in docs if d["kind"] == "Service"]
    for component in ("frontend", "worker"):
        monitor = one(docs, "ServiceMonitor", f"t-videoqa-{component}")
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert {"name": "metrics", "port": 9464} in [
            {k: p[k] for k in ("name", "port")} for p in service["spec"]["ports"]
        ]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
    # the public LoadBalancer does not expose metrics
    public = one(docs, "Service", "t-videoqa")
    assert public["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in public["spec"]["ports"]] == ["grpc"]


# --- network policy ----------------------------------------------------------------------------


def test_network_policies_let_only_frontends_reach_workers_and_only_workers_reach_redis():
    docs = production()

    def component_of(peer: dict) -> str:
        return peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]

    worker = one(docs, "NetworkPolicy", "t-videoqa-worker")["spec"]
    assert worker["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    internal = [rule for rule in worker["ingress"] if {"port": 50061, "protocol": "TCP"} in rule["ports"]]
    assert len(internal) == 1 and [component_of(p) for p in internal[0]["from"]] == ["frontend"]
    assert all(rule.get("from") for rule in worker["ingress"])  # nothing open to everyone
    redis = one(docs, "NetworkPolicy", "t-videoqa-redis")["spec"]
    (rule,) = redis["ingress"]
    assert [component_of(p) for p in rule["from"]] == ["worker"] and rule["ports"][0]["port"] == 6379
    frontend = one(docs, "NetworkPolicy", "t-videoqa-frontend")["spec"]
    public = [rule for rule in frontend["ingress"] if rule["ports"][0]["port"] == 50051]
    assert public and "from" not in public[0]


# --- simple mode -------------------------------------------------------------------------------


def test_single_mode_runs_videoqa_serve():
    docs = render("-f", str(CHART / "ci" / "single-values.yaml"))
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment") == ["t-videoqa-server"]
    assert not [d for d in docs if "redis" in d["metadata"]["name"] or d["metadata"]["name"].endswith("-worker")]
    spec = pod(docs, "t-videoqa-server")
    (server,) = spec["containers"]
    assert server["args"] == ["serve", "--listen=0.0.0.0:50051"]
    assert grpc_probes(server) == {
        "startupProbe": (50051, ""),
        "readinessProbe": (50051, "videoqa.v1.VideoQA"),
        "livenessProbe": (50051, "liveness"),
    }
    env = env_of(server)
    assert json.loads(env["VIDEOQA_MODELS"]) == ["videoqa-demo"] and "VIDEOQA_INSECURE" not in env
    assert secret_file(spec, server, env["VIDEOQA_API_KEYS_FILE"]) == ("t-videoqa-api-keys", "api-keys.json")
    assert one(docs, "Service", "t-videoqa")["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    monitored = render(
        "-f",
        str(CHART / "ci" / "single-values.yaml"),
        "--set",
        "redis.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    )
    monitor = one(monitored, "ServiceMonitor", "t-videoqa-server")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= one(monitored, "Service", "t-videoqa")["metadata"]["labels"].items()
    )
    (rule,) = one(monitored, "NetworkPolicy", "t-videoqa-redis")["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    assert "VIDEOQA_REDIS_URL" in env_of(pod(monitored, "t-videoqa-server")["containers"][0])
