"""The Ray a stage starts in-process is reachable from this machine only, and only with a token
(issue 28: it listened on every interface, without authentication, while train / tune / embed ran)."""

import ipaddress
import os
import subprocess
import sys

import psutil
import pytest

from tests.conftest import REPO

# What a stage does (pipelines/train.py, tune.py, embed.py, audit.py): init_ray inside run_stage.
STAGE = """
import os, sys
from trainwise.components.ray_start import init_ray
from trainwise.pipelines.stage import run_stage

def main():
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode
    init_ray(num_cpus=1)
    ray.get(ray.remote(lambda: 1).remote())  # a worker is up too
    token = get_authentication_mode() == AuthenticationMode.TOKEN
    print("ready", ray.get_runtime_context().gcs_address, token, flush=True)
    sys.stdin.read()  # Ray stays up while the test looks at it

run_stage(main)
"""

JOIN = "import sys, ray; ray.init(address=sys.argv[1]); print('joined', flush=True)"


def _listening(pid: int) -> list[tuple[str, int, str]]:
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    names = {}
    for p in tree:
        try:
            names[p.pid] = p.name()
        except psutil.NoSuchProcess:
            pass
    return [(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names]


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_in_process_ray_listens_on_loopback_only_and_wants_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"))  # Ray would write ~/.ray/auth_token there
    log = tmp_path / "stage.log"
    stage = subprocess.Popen([sys.executable, "-c", STAGE], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        line = stage.stdout.readline().split()
        assert line[:1] == ["ready"], log.read_text()[-3000:]
        gcs, token_mode = line[1], line[2] == "True"
        sockets = _listening(stage.pid)
        names = {n for _, _, n in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # the check sees Ray's servers
        exposed = [s for s in sockets if not _loopback(s[0])]
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert token_mode
        assert not (tmp_path / "home" / ".ray" / "auth_token").exists()  # the token lives in the environment
        # A driver on this machine that has everything but the token is turned away (it looks for
        # the node on 127.0.0.1, as the stage's own processes do).
        other = subprocess.run([sys.executable, "-c", JOIN, gcs], capture_output=True, text=True, timeout=180,
                               env={**env, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert other.returncode != 0 and "joined" not in other.stdout, other.stdout
        assert "InvalidAuthToken" in other.stderr or "Authentication" in other.stderr, other.stderr[-2000:]
    finally:
        stage.stdin.close()
        try:
            stage.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stage.kill()
