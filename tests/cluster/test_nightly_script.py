"""The nightly CronJob's script, run with sh and curl against a fake Kubernetes API server on 127.0.0.1:
it POSTs cluster/rayjob.yaml as YAML with the service account's token, skips a night while an earlier
RayJob runs, and fails (so the Job retries) when the API server refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"

pytestmark = pytest.mark.skipif(not (shutil.which("sh") and shutil.which("curl")), reason="needs sh and curl")


class FakeApi(BaseHTTPRequestHandler):
    listing: dict = {"items": []}
    create_status = 201
    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, dict(self.headers), b""))
        self.reply(200, self.listing)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(("POST", self.path, dict(self.headers), body))
        doc = yaml.safe_load(body)
        self.reply(self.create_status, {"kind": "RayJob", "metadata": {"name": doc["metadata"]["generateName"] + "x7k2p"}}
                   if self.create_status == 201 else {"kind": "Status", "message": "forbidden"})


@pytest.fixture
def api(tmp_path):
    FakeApi.listing, FakeApi.create_status, FakeApi.requests = {"items": []}, 201, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_script(tmp_path: Path, api: str) -> subprocess.CompletedProcess:
    """The CronJob container's script, with its mounts replaced by local folders."""
    cron = next(d for d in yaml.safe_load_all((CLUSTER / "nightly.yaml").read_text()) if d["kind"] == "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    mount = container["volumeMounts"][0]["mountPath"]
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    shutil.copy(CLUSTER / "rayjob.yaml", config / "rayjob.yaml")  # what the ConfigMap holds
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "namespace").write_text("lake")
    (sa / "token").write_text("token-123")
    (sa / "ca.crt").write_text("")
    return subprocess.run([*container["command"], script.replace(f"@{mount}/", f"@{config}/")],
                          env={"PATH": "/usr/bin:/bin", "SA_DIR": str(sa), "KUBERNETES_API": api},
                          capture_output=True, text=True, timeout=60)


def test_creates_the_rayjob_from_rayjob_yaml(tmp_path, api):
    done = run_script(tmp_path, api)
    assert done.returncode == 0, done.stderr
    (get, post) = FakeApi.requests
    assert get[1] == "/apis/ray.io/v1/namespaces/lake/rayjobs?labelSelector=app.kubernetes.io%2Fname%3Ddiffseg-segment"
    assert post[1] == "/apis/ray.io/v1/namespaces/lake/rayjobs"
    assert post[2]["Authorization"] == "Bearer token-123" and post[2]["Content-Type"] == "application/yaml"
    assert post[3] == (CLUSTER / "rayjob.yaml").read_bytes()
    assert "created RayJob" in done.stdout and "diffseg-segment-x7k2p" in done.stdout


def test_skips_the_night_while_an_earlier_rayjob_runs(tmp_path, api):
    FakeApi.listing = {"items": [{"metadata": {"name": "diffseg-segment-old"}, "status": {"jobDeploymentStatus": "Complete"}},
                                 {"metadata": {"name": "diffseg-segment-abc"}, "status": {"jobDeploymentStatus": "Running"}}]}
    done = run_script(tmp_path, api)
    assert done.returncode == 0 and "still running: skipping this night" in done.stdout
    assert [r[0] for r in FakeApi.requests] == ["GET"]
    FakeApi.listing = {"items": [{"metadata": {"name": "diffseg-segment-old"}, "status": {"jobDeploymentStatus": "Failed"}}]}
    assert run_script(tmp_path, api).returncode == 0 and FakeApi.requests[-1][0] == "POST"


def test_a_refused_create_fails_the_job_so_it_is_retried(tmp_path, api):
    FakeApi.create_status = 403
    done = run_script(tmp_path, api)
    assert done.returncode != 0 and "forbidden" in done.stdout + done.stderr
