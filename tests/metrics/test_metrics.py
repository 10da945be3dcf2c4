"""paramex-server --metrics-listen: the values after real training, the exposition format
(promtool check metrics), bad requests (404, 405, 401, oversized), HTTPS, a port in use,
and a connection flood that never reaches the training path."""
import http.client
import socket
import subprocess

import pytest

from conftest import get, promtool_check, scrape, train, value
from pxserver import SERVER_BIN, WAIT_S, wait_until


def test_values_after_training(server):
    srv = server("--workers", "2", "--metrics-listen", "127.0.0.1:0")
    assert srv.metrics_url == f"http://127.0.0.1:{srv.metrics_port}/metrics"
    before, _ = scrape(srv)
    assert value(before, "paramex_version") == 0
    assert value(before, "paramex_workers_expected") == 2
    train(srv.addr, 2, 7)
    m, text = scrape(srv)
    assert promtool_check(text) == ""
    assert value(m, "paramex_version") == 7 and value(m, "paramex_version_max") == 7
    assert value(m, "paramex_steps_completed_total") == 7
    assert value(m, "paramex_step_duration_seconds_count") == 7
    assert value(m, "paramex_step_duration_seconds_bucket", le="+Inf") == 7
    assert value(m, "paramex_step_duration_seconds_sum") > 0
    assert value(m, "paramex_chunk_step_duration_seconds_count") == 7  # one chunk per step
    params = value(m, "paramex_memory_bytes", kind="parameters")
    assert params > 0 and value(m, "paramex_tensors") >= 1
    # every step, both workers pushed every parameter once
    assert value(m, "paramex_push_bytes_total") == 2 * 7 * params
    assert value(m, "paramex_push_wire_bytes_total", encoding="raw") > 0
    assert value(m, "paramex_pull_bytes_total") > 0
    for w in ("0", "1"):
        assert value(m, "paramex_worker_steps", worker=w) == 7
        # a worker that left is done, not behind: no lag row
        assert ("paramex_worker_lag_steps", frozenset({("worker", w)})) not in m
        assert value(m, "paramex_worker_finished", worker=w) == 1  # the demo said Leave
        assert value(m, "paramex_worker_up", worker=w) == 0
    assert value(m, "paramex_calls_total", method="Join", code="OK") == 2
    assert value(m, "paramex_calls_total", method="Leave", code="OK") == 2
    assert value(m, "paramex_memory_limit_bytes") > 0
    assert value(m, "process_resident_memory_bytes") > 0
    assert value(m, "process_cpu_seconds_total") > 0
    assert value(m, "paramex_build_info", version="0.1.0") == 1


def test_checkpoint_metrics(server, tmp_path):
    srv = server("--workers", "1", "--checkpoint-dir", str(tmp_path / "ckpt"),
                 "--checkpoint-every", "5", "--metrics-listen", "127.0.0.1:0")
    train(srv.addr, 1, 7)
    done = tmp_path / "ckpt" / "ckpt-00000000000000000005.safetensors"
    wait_until(done.exists, "the checkpoint of version 5")
    wait_until(lambda: value(scrape(srv)[0], "paramex_checkpoints_written_total") >= 1,
               "the checkpoint counted")
    m, _ = scrape(srv)
    written = value(m, "paramex_checkpoints_written_total")
    assert value(m, "paramex_checkpoint_failures_total") == 0
    assert value(m, "paramex_checkpoint_duration_seconds_count") == written
    assert value(m, "paramex_checkpoint_last_version") == 5
    assert value(m, "paramex_checkpoint_last_bytes") == done.stat().st_size
    assert value(m, "paramex_checkpoint_last_timestamp_seconds") > 1.7e9


def test_bad_requests_change_nothing(server):
    srv = server("--workers", "1", "--metrics-listen", "127.0.0.1:0")
    status, headers, body = get(srv.metrics_port, "/nope")
    assert status == 404 and "/metrics" in body
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = get(srv.metrics_port, method=method, body="x" * 100)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, _ = get(srv.metrics_port, headers={"X-Big": "y" * 100000})
    assert status in (413, 431)  # the library's limit on a request's memory
    status, _, body = get(srv.metrics_port, method="HEAD")
    assert status == 200 and body == ""
    # the training path was never touched
    train(srv.addr, 1, 3)
    m, _ = scrape(srv)
    assert value(m, "paramex_version") == 3


def test_token(server, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    srv = server("--workers", "1", "--token-file", str(token), "--metrics-listen",
                 "127.0.0.1:0")
    status, headers, _ = get(srv.metrics_port)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = get(srv.metrics_port, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    m, _ = scrape(srv, headers={"Authorization": "Bearer s3cret"})
    assert value(m, "paramex_version") == 0
    open_srv = server("--workers", "1", "--token-file", str(token), "--metrics-no-auth",
                      "--metrics-listen", "127.0.0.1:0")
    m, _ = scrape(open_srv)
    assert value(m, "paramex_workers_expected") == 1


def test_https_with_the_servers_certificate(server, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=WAIT_S)
    srv = server("--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key),
                 "--metrics-listen", "127.0.0.1:0")
    assert srv.metrics_url.startswith("https://127.0.0.1:")
    m, _ = scrape(srv, tls_ca=str(cert))
    assert value(m, "paramex_version") == 0
    with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP gets no page
        get(srv.metrics_port)


def test_port_in_use_exits_2():
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        r = subprocess.run([SERVER_BIN, "--listen", "127.0.0.1:0", "--metrics-listen",
                            f"127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=WAIT_S)
    finally:
        held.close()
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"paramex-server: --metrics-listen: cannot listen on 127.0.0.1:{port}: "
        "Address already in use")
    r = subprocess.run([SERVER_BIN, "--listen", "127.0.0.1:0", "--metrics-listen", "nowhere"],
                       capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 2 and "'nowhere' is not HOST:PORT" in r.stderr


def test_connection_flood_leaves_training_alone(server):
    srv = server("--workers", "2", "--metrics-listen", "127.0.0.1:0")
    flood = []
    try:
        for _ in range(100):  # more than the endpoint's connection cap (64), idle
            s = socket.create_connection(("127.0.0.1", srv.metrics_port), timeout=WAIT_S)
            flood.append(s)
        train(srv.addr, 2, 5)  # the gRPC port serves as usual meanwhile
    finally:
        for s in flood:
            s.close()
    # and the endpoint again once the server saw them go
    wait_until(lambda: answers(srv), "a scrape after the flood")
    m, _ = scrape(srv)
    assert value(m, "paramex_version") == 5


def answers(srv):
    try:
        return get(srv.metrics_port)[0] == 200
    except (http.client.HTTPException, OSError):
        return False
