import io

from components.runtime import _DropRayletNoise

NOISE = ("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: abc with "
         "address: 10.0.0.1, which is 4x the maximum expected startup concurrency (2).")


def test_filter_drops_only_the_worker_startup_warning_and_its_newline():
    out = io.StringIO()
    f = _DropRayletNoise(out)
    print(NOISE, file=f)
    print("(raylet) A worker died or was killed: OOM", file=f)
    print("[train] epoch 1", file=f)
    assert out.getvalue() == "(raylet) A worker died or was killed: OOM\n[train] epoch 1\n"
