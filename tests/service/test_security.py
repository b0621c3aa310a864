"""API keys, tenants, TLS and mutual TLS on the public port, with real servers and certificates
made by the test; and the refusal to start an open public port unless asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import Authority
from tests.conftest import wait_serving
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.service.auth import ApiKeys, Unauthenticated, bearer_token
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789ab"
WORKER_SERVICE = "videoqa.internal.v1.Worker"


@pytest.fixture(scope="module")
def worker(loop_thread):
    from videoqa.service.app import start_worker
    from videoqa.worker.settings import WorkerSettings

    running = loop_thread.run(start_worker(WorkerSettings(models=["tiny-qwen2-vl"]), "127.0.0.1:0"))
    wait_serving(f"127.0.0.1:{running.port}", WORKER_SERVICE)
    yield f"127.0.0.1:{running.port}"
    loop_thread.run(running.stop(0))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Files: ca, server cert/key, a client cert/key from the same CA, and one from another CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca, stranger = Authority(), Authority("someone else's CA")
    (directory / "ca.pem").write_bytes(ca.pem)
    files = {"ca": directory / "ca.pem"}
    files["server_cert"], files["server_key"] = ca.issue("localhost", server=True).write(directory, "server")
    files["client_cert"], files["client_key"] = ca.issue("client", server=False).write(directory, "client")
    files["stranger_cert"], files["stranger_key"] = stranger.issue("mallory", server=False).write(directory, "stranger")
    return files


@pytest.fixture()
def frontend(loop_thread, worker):
    """``frontend(**settings) -> address`` of a frontend in front of the shared worker."""
    from videoqa.service.app import FrontendSettings, start_frontend

    started = []

    def start(**settings) -> str:
        running = loop_thread.run(
            start_frontend(FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1, **settings), [worker])
        )
        started.append(running)
        return f"127.0.0.1:{running.port}"

    yield start
    for running in started:
        loop_thread.run(running.stop(0))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("media") / "v.mp4"
    make_video(path, frames=8, size=(64, 48), fps=8)
    return path.read_bytes()


def keys_file(tmp_path: Path) -> str:
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps({"alice": ALICE, "bob": [BOB]}))
    return str(path)


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_api_keys_and_tenants(frontend, tmp_path, video):
    address = frontend(api_keys_file=keys_file(tmp_path))
    wait_serving(address, "videoqa.v1.VideoQA")  # health needs no key
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        for metadata in (None, bearer("wrong-key-0123456789"), [("authorization", f"Basic {ALICE}")]):
            assert code_of(lambda m=metadata: stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=m)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            assert code_of(
                lambda m=metadata: list(stub.CreateSession(upload(spec(), video=video), timeout=30, metadata=m))
            ) == (grpc.StatusCode.UNAUTHENTICATED)
        created = events(
            stub.CreateSession(upload(spec(question="hi"), video=video), timeout=60, metadata=bearer(ALICE))
        )
        session_id = created["session"][0].session.session_id
        ask = pb.AskRequest(session_id=session_id, question="more?", generation=pb.GenerationParams(max_new_tokens=3))
        assert events(stub.Ask(ask, timeout=60, metadata=bearer(ALICE)))["stats"]
        # bob is authenticated, but the session is alice's
        assert (
            code_of(lambda: list(stub.Ask(ask, timeout=30, metadata=bearer(BOB)))) == grpc.StatusCode.PERMISSION_DENIED
        )
        get = pb.GetSessionRequest(session_id=session_id)
        assert (
            code_of(lambda: stub.GetSession(get, timeout=10, metadata=bearer(BOB))) == grpc.StatusCode.PERMISSION_DENIED
        )
        delete = pb.DeleteSessionRequest(session_id=session_id)
        assert code_of(lambda: stub.DeleteSession(delete, timeout=10, metadata=bearer(BOB))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: stub.GetSession(get, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        # nothing bob tried changed alice's session
        assert stub.GetSession(get, timeout=10, metadata=bearer(ALICE)).turns == 2
        stub.DeleteSession(delete, timeout=10, metadata=bearer(ALICE))


def test_sdk_and_cli_with_api_key_over_mutual_tls(frontend, pki, tmp_path, video):
    from videoqa.client import VideoQAClient, tls_credentials
    from videoqa.client.cli import main as cli

    address = frontend(
        api_keys_file=keys_file(tmp_path),
        tls_cert_file=str(pki["server_cert"]),
        tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]),
    )
    target = address.replace("127.0.0.1", "localhost")
    credentials = tls_credentials(str(pki["ca"]), str(pki["client_cert"]), str(pki["client_key"]))
    with VideoQAClient(target, credentials=credentials, api_key=ALICE, timeout=60) as client:
        assert [m.id for m in client.list_models()] == ["tiny-qwen2-vl"]
    common = ["--server", target, "--ca-cert", str(pki["ca"]), "--client-cert", str(pki["client_cert"])]
    common += ["--client-key", str(pki["client_key"])]
    assert cli(["models", *common, "--token", BOB]) == 0
    assert cli(["models", *common, "--token", "wrong-key-0123456789"]) != 0


def test_tls_refuses_plaintext_and_mutual_tls_refuses_strangers(frontend, pki):
    from videoqa.client import tls_credentials

    tls = frontend(tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]))
    mutual = frontend(
        tls_cert_file=str(pki["server_cert"]),
        tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]),
        health_listen="127.0.0.1:0",
    )

    def list_models(address: str, credentials=None) -> grpc.StatusCode:
        channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        with channel:
            try:
                videoqa_pb2_grpc.VideoQAStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

    ca = str(pki["ca"])
    assert list_models(tls, tls_credentials(ca)) == grpc.StatusCode.OK
    assert list_models(tls) == grpc.StatusCode.UNAVAILABLE  # a plaintext client gets no connection
    assert list_models(tls, tls_credentials()) == grpc.StatusCode.UNAVAILABLE  # the server's CA is not trusted
    assert list_models(mutual, tls_credentials(ca, str(pki["client_cert"]), str(pki["client_key"]))) == (
        grpc.StatusCode.OK
    )
    assert list_models(mutual, tls_credentials(ca)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    stranger = tls_credentials(ca, str(pki["stranger_cert"]), str(pki["stranger_key"]))
    assert list_models(mutual, stranger) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_beside_a_tls_port(loop_thread, worker, pki):
    import socket

    from videoqa.service.app import FrontendSettings, start_frontend

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        health_port = sock.getsockname()[1]
    settings = FrontendSettings(
        listen="127.0.0.1:0",
        probe_interval_s=0.1,
        tls_cert_file=str(pki["server_cert"]),
        tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]),
        health_listen=f"127.0.0.1:{health_port}",
    )
    running = loop_thread.run(start_frontend(settings, [worker]))
    try:
        wait_serving(f"127.0.0.1:{health_port}", "videoqa.v1.VideoQA")
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            stub = videoqa_pb2_grpc.VideoQAStub(channel)  # only health is served there
            assert code_of(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        loop_thread.run(running.stop(0))


def test_an_open_public_port_needs_insecure_and_is_logged_loudly():
    from videoqa.service.app import FrontendSettings, check_security

    with pytest.raises(SystemExit, match="--insecure"):
        check_security(FrontendSettings(insecure=False))
    videoqa = str(Path(sys.executable).parent / "videoqa")
    refused = subprocess.run(
        [videoqa, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "--insecure" in refused.stderr
    with pytest.raises(ValueError, match="together"):
        FrontendSettings(tls_cert_file="cert.pem")


def test_api_key_file_rules(tmp_path):
    def load(content) -> ApiKeys:
        path = tmp_path / "keys.json"
        path.write_text(json.dumps(content))
        return ApiKeys.from_file(path)

    keys = load({"a": ALICE, "b": [BOB, "b-second-key-0123456"]})
    assert keys.tenants == {"a", "b"}
    assert keys(bearer(ALICE)) == "a" and keys(bearer("b-second-key-0123456")) == "b"
    assert keys([("Authorization", f"bearer  {BOB} ")]) == "b"
    assert bearer_token([("x-other", "1")]) is None
    with pytest.raises(Unauthenticated):
        keys(bearer(ALICE[:-1]))  # a prefix of a key is no key
    for bad in ({"a": "short"}, {"a": ALICE, "b": ALICE}, {}, ["not", "a", "mapping"]):
        with pytest.raises(ValueError):
            load(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeys.from_file(tmp_path / "missing.json")


def test_rotated_keys_are_picked_up_without_a_restart(tmp_path):
    import os

    from videoqa.service.auth import ApiKeyFile

    now = [0.0]
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"a": ALICE}))
    keys = ApiKeyFile(path, interval_s=5.0, clock=lambda: now[0])
    assert keys(bearer(ALICE)) == "a"
    path.write_text(json.dumps({"a": BOB}))  # rotate: the old key goes, a new one comes
    os.utime(path, (1, 1))
    assert keys(bearer(ALICE)) == "a", "checked at most every interval"
    now[0] = 6.0
    assert keys(bearer(BOB)) == "a"
    with pytest.raises(Unauthenticated):
        keys(bearer(ALICE))
    path.write_text("{not json")  # a broken rotation keeps the last good keys
    os.utime(path, (2, 2))
    now[0] = 12.0
    assert keys(bearer(BOB)) == "a"
