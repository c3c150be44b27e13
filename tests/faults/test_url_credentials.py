"""A password in `ingest.path` reaches no file and no message (issue 28 item 2).

Before: with `http://user:password@host/data.tar.gz` the password landed in dvc.lock (twice: as the
dependency and in the `ingest` params), in data/ingest/manifest.json (and so in the DVC cache that
`dvc push` uploads), in the ingest run's MLflow artifact and in error messages. Now such a URL is
refused before anything runs, and the way the message recommends (the URL without credentials, the
password in ~/.netrc) ingests with a dvc.lock that holds no password.
"""

import base64
import functools
import http.server
import json
import secrets
import subprocess
import sys
import threading
import zipfile

import pytest

from trainwise.pipelines.config import ConfigError, parse_params
from tests.unit.test_sources import image_bytes

SECRET = f"hunter2-{secrets.token_hex(4)}"  # drawn now: the project copy holds this file too


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder to `bob` / SECRET only (basic auth), with an ETag (DVC hashes an http
    dependency by it)."""

    def _authorised(self) -> bool:
        good = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") == good:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="data"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self):
        if self._authorised():
            super().do_GET()

    def do_HEAD(self):
        if self._authorised():
            super().do_HEAD()

    def end_headers(self):
        self.send_header("ETag", '"pets-v1"')
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def private_server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "pets.zip", "w") as zf:
        for rel, seed in (("cats/a.jpg", 1), ("cats/b.jpg", 2), ("dogs/c.jpg", 3), ("dogs/d.jpg", 4)):
            zf.writestr(rel, image_bytes(seed=seed))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_AuthHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("url", [f"http://bob:{SECRET}@host/pets.zip", f"https://bob:p@ss{SECRET}@host/pets.zip",
                                 f"https://{SECRET}@host/pets.zip", f"s3://b/pets.zip?X-Amz-Signature={SECRET}"])
def test_ingest_path_with_credentials_is_refused_without_repeating_them(url):
    with pytest.raises(ConfigError) as err:
        parse_params({"ingest": {"source": "image_folder", "path": url}})
    msg = str(err.value)
    assert "ingest.path" in msg and "dvc.lock" in msg and "~/.netrc" in msg and "docs/security.md" in msg
    assert SECRET not in msg


def _files_holding(root, text: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and ".git" not in p.relative_to(root).parts and p.name != "params.yaml"
                  and text.encode() in p.read_bytes())


@pytest.mark.timeout(900)
def test_a_password_in_the_url_never_reaches_dvc_lock_outputs_or_messages(tmp_path, private_server):
    import yaml

    from tests.project import copy_project

    root = tmp_path / "proj"
    env = copy_project(root, params={"ingest": {"source": "image_folder",
                                                "path": f"http://bob:{SECRET}@{private_server}/pets.zip"},
                                     "mlflow": {"enabled": False}})
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    trainwise = [sys.executable, "-m", "trainwise.pipelines.cli"]
    for cmd in (trainwise + ["check"], trainwise + ["run", "ingest"], trainwise + ["stage", "ingest"],
                ["dvc", "repro", "ingest"]):
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0, (cmd, proc.stdout[-2000:])
        out = proc.stdout + proc.stderr
        assert "ingest.path" in out and "~/.netrc" in out, (cmd, out[-3000:])
        assert SECRET not in out, (cmd, out[-3000:])
    assert _files_holding(root, SECRET) == []  # no dvc.lock, manifest, MLflow store or log holds it

    # What the message says to do: the URL without the password, the password in ~/.netrc, and fsspec
    # told to read it (DVC's own http client already does).
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["path"] = f"http://{private_server}/pets.zip"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    netrc = tmp_path / "home" / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {SECRET}\n")
    netrc.chmod(0o600)
    env["FSSPEC_HTTP"] = json.dumps({"client_kwargs": {"trust_env": True}})
    proc = subprocess.run(["dvc", "repro", "ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    lock = (root / "dvc.lock").read_text()
    assert f"http://{private_server}/pets.zip" in lock
    assert json.loads((root / "data" / "ingest" / "manifest.json").read_text())["rows"] == 4
    assert _files_holding(root, SECRET) == []


def test_a_tracking_uri_with_a_password_in_params_yaml_is_accepted_with_a_warning():
    """MLflow accepts `user:pass@` (it sends them as basic auth), but params.yaml is a file for git."""
    with pytest.warns(UserWarning, match="mlflow.tracking_uri carries a user name and password") as seen:
        p = parse_params({"mlflow": {"tracking_uri": f"https://bob:{SECRET}@mlflow.example"}})
    assert p.mlflow.tracking_uri.endswith("@mlflow.example")
    assert SECRET not in str(seen[0].message) and "MLFLOW_TRACKING_PASSWORD" in str(seen[0].message)
