"""`convfm serve` as users run it: a subprocess with its own local Ray serves the registry entry, answers
HTTP, and on a SIGTERM to its process group (`timeout`, a scheduler, a script's `kill 0`; one to its pid takes the
same path) shuts Serve and Ray down in seconds and exits 0, behind either proxy (``serve.proxy``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from convfm.cli.serve import free_port

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
@pytest.mark.parametrize("proxy", ["serve", "haproxy"])
def test_serve_command_answers_and_stops_cleanly_on_a_sigterm_to_its_process_group(tiny, tmp_path, proxy):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the test session's
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  proxy: {proxy}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "convfm.cli.main", "serve", "--model", str(tiny.entry), "--port", str(port),
         "--num-cpus", "2", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True)
    stopping = None
    try:
        started = []
        for line in process.stdout:  # blocks until the command reports ready (or exits); the timeout bounds it
            started.append(line)
            if line.startswith("Ctrl-C to stop"):
                break
        assert any(f"at http://127.0.0.1:{port}" in line for line in started), (started, process.poll())
        notice = [line for line in started if line.startswith("HAProxy in front; its stats page (port ")]
        assert len(notice) == (proxy == "haproxy"), started
        if notice:  # HAProxy's own page answers at the port it names (not Ray's fixed 8404)
            stats = int(notice[0].split("(port ")[1].split(")")[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{stats}/stats", timeout=30) as response:
                assert response.status == 200 and b"HAProxy" in response.read()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", method="POST",
                                         data=json.dumps({"user_id": "somebody-new", "k": 3}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert len(body["items"]) == 3 and body["fallback"] == "popular"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=60) as response:
            assert json.loads(response.read())["proxy"] == proxy
    finally:
        # Ray's GCS and raylet were in this group: stopped with the driver, its clean stop waited 60 s for the GCS
        stopping = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=40)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    # Behind HAProxy Ray held the replica open 30 s for a load balancer to deregister it: every stop took 34 s.
    assert time.monotonic() - stopping < 25
    assert process.returncode == 0, err[-3000:]
    assert "stopped: Serve and Ray shut down" in out
    assert "Traceback" not in err
    assert "Connecting to existing Serve app" not in out + err  # its own start applied the port: no notice
    for _ in range(100):  # nothing of its group outlives it: Ray's processes, HAProxy
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"processes of the service's group still run 10 s after its exit ({proxy})")
