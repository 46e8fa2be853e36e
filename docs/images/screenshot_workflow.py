"""Screenshot an example workflow loaded in ComfyUI's own page (headless Chromium against a local ComfyUI).

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python docs/images/screenshot_workflow.py \
        workflows/01_text_to_transparent_sd15.json docs/images/workflow_sd15.png 540

Starts ``main.py --cpu`` on a free port with this pack in a temporary custom_nodes folder (the ComfyUI checkout is
not modified), opens the page in ``chromium --headless``, loads the workflow with the frontend's own
``app.loadGraphData`` over the DevTools protocol, and saves a PNG (optionally only the top CROP_HEIGHT px). Needs Debian's ``chromium`` and aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


async def capture(debug_port: int, page_url: str, workflow: dict, out: str, width: int, height: int,
                  crop_height: int | None = None) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{debug_port}/json") as r:
            targets = await r.json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            counter = 0

            async def call(method, **params):
                nonlocal counter
                counter += 1
                my_id = counter
                await ws.send_json({"id": my_id, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == my_id:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})

            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.enable")
            await call("Page.navigate", url=page_url)
            ready = False
            for _ in range(120):
                await asyncio.sleep(1)
                res = await call("Runtime.evaluate", expression="!!(window.app && window.app.graph)", returnByValue=True)
                if res.get("result", {}).get("value"):
                    ready = True
                    break
            if not ready:
                raise RuntimeError("the ComfyUI page did not finish loading (window.app.graph missing)")
            await asyncio.sleep(3)
            expr = f"window.app.loadGraphData({json.dumps(workflow)}).then(() => true)"
            await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
            await asyncio.sleep(3)
            clip = {"x": 0, "y": 0, "width": width, "height": crop_height or height, "scale": 1}
            shot = await call("Page.captureScreenshot", format="png", clip=clip)
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))


def fit_view(workflow: dict, width: int, height: int, margin: int = 30) -> dict:
    """Set the saved canvas view (extra.ds) so every node is visible: screen = (pos + offset) * scale."""
    xs0 = min(n["pos"][0] for n in workflow["nodes"])
    ys0 = min(n["pos"][1] for n in workflow["nodes"])
    xs1 = max(n["pos"][0] + n["size"][0] for n in workflow["nodes"])
    ys1 = max(n["pos"][1] + n["size"][1] for n in workflow["nodes"])
    top, left = 90, 70  # the page's menu bar and side bar
    scale = min((width - left - 2 * margin) / (xs1 - xs0), (height - top - 2 * margin) / (ys1 - ys0), 1.0)
    offset = [(left + margin) / scale - xs0, (top + margin) / scale - ys0]
    workflow = dict(workflow)
    workflow["extra"] = {**workflow.get("extra", {}), "ds": {"scale": scale, "offset": offset}}
    return workflow


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    workflow_path, out = argv[:2]
    crop_height = int(argv[2]) if len(argv) == 3 else None
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        print("set COMFYUI_PATH", file=sys.stderr)
        return 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    with open(workflow_path, encoding="utf-8") as f:
        workflow = fit_view(json.load(f), 1600, 860)
    tmp = tempfile.mkdtemp(prefix="dm-shot-")
    nodes_dir = os.path.join(tmp, "custom_nodes")
    os.makedirs(nodes_dir)
    os.symlink(REPO, os.path.join(nodes_dir, "DiffuMatting"))
    yaml_path = os.path.join(tmp, "extra.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"shot:\n  base_path: {tmp}\n  custom_nodes: custom_nodes\n")
    for sub in ("user", "output", "temp"):
        os.makedirs(os.path.join(tmp, sub))
    # a first start would open the template browser over the canvas: mark the tutorial as seen
    os.makedirs(os.path.join(tmp, "user", "default"))
    with open(os.path.join(tmp, "user", "default", "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)
    port, debug_port = free_port(), free_port()
    env = dict(os.environ)
    server = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-api-nodes",
         "--extra-model-paths-config", yaml_path, "--user-directory", os.path.join(tmp, "user"),
         "--output-directory", os.path.join(tmp, "output"), "--temp-directory", os.path.join(tmp, "temp"),
         "--database-url", "sqlite:///:memory:"],
        cwd=comfyui, env=env, stdout=open(os.path.join(tmp, "server.log"), "w"), stderr=subprocess.STDOUT)
    browser = None
    try:
        wait_http(f"http://127.0.0.1:{port}/object_info/DiffuMattingAlphaComposite", 300, server)
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={debug_port}", f"--user-data-dir={os.path.join(tmp, 'chrome')}",
             "--window-size=1600,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{debug_port}/json/version", 60, browser)
        asyncio.run(capture(debug_port, f"http://127.0.0.1:{port}/", workflow, out, 1600, 900, crop_height))
        print(f"wrote {out} (server log: {tmp}/server.log)")
    finally:
        for proc in (browser, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
