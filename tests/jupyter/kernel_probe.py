"""Run code in a new kernel through JupyterLab's REST and websocket API, as the
browser does, and print what the kernel printed as one JSON line.

Usage: PROBE_TOKEN=... python kernel_probe.py BASE_URL CODE_FILE
(the token goes by environment: command lines are world-readable, and the
test checks that no process shows the token in one).
"""

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect


async def main(base: str, token: str, code: str) -> dict:
    headers = {"Authorization": f"token {token}"}
    http = AsyncHTTPClient()
    reply = await http.fetch(
        HTTPRequest(f"{base}/api/kernels", method="POST", headers=headers, body="{}")
    )
    kernel = json.loads(reply.body)["id"]
    ws_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    msg_id = uuid.uuid4().hex
    await ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id, "msg_type": "execute_request", "username": "probe",
                    "session": uuid.uuid4().hex, "version": "5.3", "date": "",
                },
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
            }
        )
    )  # fmt: skip
    out, status, idle = [], None, False
    while status is None or not idle:
        raw = await asyncio.wait_for(ws.read_message(), 120)
        if raw is None:
            raise RuntimeError("websocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            out.append("\n".join(content["traceback"]))
        elif kind == "execute_reply":
            status = content["status"]
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    ws.close()
    await http.fetch(HTTPRequest(f"{base}/api/kernels/{kernel}", method="DELETE", headers=headers))
    return {"status": status, "output": "".join(out)}


if __name__ == "__main__":
    result = asyncio.run(
        main(sys.argv[1], os.environ["PROBE_TOKEN"], Path(sys.argv[2]).read_text())
    )
    print(json.dumps(result))
