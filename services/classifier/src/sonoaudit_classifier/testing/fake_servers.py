"""Local fake LLM servers speaking the real wire formats, for tests, demos and the benchmark.

* :class:`FakeGeminiServer`: ``POST {base}/{v1|v1beta}/models/{model}:generateContent`` like the
  Gemini API (the real google-genai SDK is pointed at it with ``base_url``).
* :class:`FakeOpenAIServer`: ``POST {base}/chat/completions`` like an OpenAI-compatible server.

Replies are scripted: a global queue (:meth:`script`) and per-image queues (:meth:`script_for`,
keyed by the sha256 of the image bytes sent), then the default: a valid answer whose label is
``label_for(image bytes)``. Reply codes: ``ok``, ``ok:<label>``, ``429`` / ``429:<delay s>``,
``500``, ``503``, ``400``, ``401``, ``blocked``, ``safety``, ``max_tokens``, ``bad_json``,
``bad_schema``, ``empty``, ``slow:<s>`` (answer ok after s seconds), ``hang`` (sleep 3600 s);
Gemini only: ``bad_body`` (HTTP 200 whose body the SDK cannot parse into its response type: it
raises a pydantic ValidationError, not an API error).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABELS = ("benign", "malignant", "normal")


def default_label(image: bytes) -> str:
    """Deterministic label from the image bytes."""
    return LABELS[hashlib.sha256(image).digest()[0] % 3]


def verdict_for(label: str) -> dict[str, Any]:
    mass = label != "normal"
    findings = {
        "shape": ("irregular" if label == "malignant" else "oval") if mass else "no_mass",
        "orientation": ("not_parallel" if label == "malignant" else "parallel") if mass
        else "no_mass",
        "margin": ("spiculated" if label == "malignant" else "circumscribed") if mass
        else "no_mass",
        "echo_pattern": "hypoechoic" if mass else "no_mass",
        "posterior_features": ("shadowing" if label == "malignant" else "enhancement") if mass
        else "no_mass",
    }
    return {"findings": findings, "rationale": f"fake server answer: {label}", "label": label,
            "confidence": 80}


class _FakeBase:
    kind = "base"

    def __init__(self, *, latency_s: float = 0.0,
                 label_for: Callable[[bytes], str] = default_label,
                 model_version: str = "fake-model-001", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.latency_s = latency_s
        self.label_for = label_for
        self.model_version = model_version
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._per_image: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[dict[str, Any]] = []
        self.calls_by_image: dict[str, int] = defaultdict(int)
        self._counter = 0
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- scripting --------------------------------------------------------------------------
    def script(self, *replies: str) -> None:
        with self._lock:
            self._queue.extend(replies)

    def script_for(self, image: bytes | str, *replies: str) -> None:
        key = image if isinstance(image, str) else hashlib.sha256(image).hexdigest()
        with self._lock:
            self._per_image[key].extend(replies)

    def _next_reply(self, image_sha: str | None) -> str:
        with self._lock:
            if image_sha is not None and self._per_image.get(image_sha):
                return self._per_image[image_sha].popleft()
            if self._queue:
                return self._queue.popleft()
        return "ok"

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _FakeBase:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name=f"fake-{self.kind}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handling ---------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                self._serve(b"", get=True)

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                self._serve(self.rfile.read(length))

            def _serve(self, body: bytes, get: bool = False) -> None:
                try:
                    if get:
                        status, headers, payload = fake._handle_get(self.path,
                                                                    dict(self.headers))
                    else:
                        status, headers, payload = fake._handle(self.path, dict(self.headers),
                                                                body)
                except Exception as exc:  # a bug in the fake must be visible, not a hang
                    status, headers, payload = 599, {}, {"error": repr(exc)}
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def _record(self, path: str, image_sha: str | None, summary: dict[str, Any]) -> int:
        with self._lock:
            self._counter += 1
            if image_sha:
                self.calls_by_image[image_sha] += 1
            self.requests.append({"path": path, "image_sha256": image_sha, **summary})
            return self._counter

    def _sleep_for(self, reply: str) -> None:
        delay = self.latency_s
        if reply.startswith("slow:"):
            delay += float(reply.split(":", 1)[1])
        elif reply == "hang":
            delay += 3600
        if delay:
            time.sleep(delay)

    def _handle(self, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], Any]:
        raise NotImplementedError

    def _handle_get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        return 404, {}, {"error": {"code": 404, "message": f"no route GET {path}"}}


def _b64(data: str) -> bytes:
    """The SDK sends URL-safe base64; other clients send the standard alphabet."""
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


def _error(code: int, status: str, message: str,
           details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status,
                      "details": details or []}}


class FakeGeminiServer(_FakeBase):
    """Also serves Gemini Batch mode: ``POST .../models/{m}:batchGenerateContent`` (inline
    requests; each answered like a generateContent call, scripts included) and
    ``GET .../batches/{id}`` (RUNNING for ``batch_polls`` polls, then ``batch_final_state``)."""

    kind = "gemini"
    batch_polls = 1
    batch_final_state = "BATCH_STATE_SUCCEEDED"
    rejected_key = "rejected-key"  # answered like Google answers a wrong key (400)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batch_jobs: dict[str, dict[str, Any]] = {}

    def _handle(self, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], Any]:
        key = next((v for k, v in headers.items() if k.lower() == "x-goog-api-key"), "")
        if not key:
            return 401, {}, _error(401, "UNAUTHENTICATED", "API key missing")
        if key == self.rejected_key:
            return 400, {}, _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a "
                                   "valid API key.")
        if ":batchGenerateContent" in path:
            return self._create_batch(path, json.loads(body))
        if ":generateContent" not in path:
            return 404, {}, _error(404, "NOT_FOUND", f"no route {path}")
        return self._generate(path, json.loads(body))

    def _create_batch(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        batch = body.get("batch", {})
        entries = batch.get("inputConfig", {}).get("requests", {}).get("requests", [])
        if not entries:
            return 400, {}, _error(400, "INVALID_ARGUMENT", "batch: no inline requests")
        out = []
        for entry in entries:  # answered now, revealed when the job "finishes"
            status, _, payload = self._generate(path, entry["request"])
            item: dict[str, Any] = {"metadata": entry.get("metadata", {})}
            if status == 200:
                item["response"] = payload
            else:
                item["error"] = {"code": status, "message": payload["error"]["message"]}
            out.append(item)
        with self._lock:
            name = f"batches/fake-{len(self.batch_jobs) + 1}"
            self.batch_jobs[name] = {"polls": 0, "responses": out,
                                     "display_name": batch.get("displayName")}
        model = path.split("/models/", 1)[1].split(":", 1)[0]
        return 200, {}, {"name": name, "metadata": {
            "model": f"models/{model}", "displayName": batch.get("displayName"),
            "state": "BATCH_STATE_PENDING"}}

    def _handle_get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        name = "batches/" + path.split("/batches/", 1)[-1].split("?", 1)[0]
        with self._lock:
            job = self.batch_jobs.get(name)
            if job is None:
                return 404, {}, _error(404, "NOT_FOUND", f"no batch {name}")
            job["polls"] += 1
            done = job["polls"] > self.batch_polls
        meta: dict[str, Any] = {"displayName": job["display_name"],
                                "state": self.batch_final_state if done else
                                "BATCH_STATE_RUNNING"}
        if done and self.batch_final_state == "BATCH_STATE_SUCCEEDED":
            meta["output"] = {"inlinedResponses": {"inlinedResponses": job["responses"]}}
        return 200, {}, {"name": name, "metadata": meta}

    def _generate(self, path: str, req: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        image: bytes | None = None
        texts: list[str] = []
        for content in req.get("contents", []):
            for part in content.get("parts", []):
                inline = part.get("inlineData") or part.get("inline_data")
                if inline and image is None:
                    image = _b64(inline["data"])
                    mime = inline.get("mimeType") or inline.get("mime_type")
                if "text" in part:
                    texts.append(part["text"])
        sha = hashlib.sha256(image).hexdigest() if image is not None else None
        gen = req.get("generationConfig", {})
        self._record(path, sha, {
            "mime_type": mime if image is not None else None,
            "temperature": gen.get("temperature"), "seed": gen.get("seed"),
            "has_response_schema": "responseSchema" in gen,
            "response_schema": gen.get("responseSchema"),
            "system": req.get("systemInstruction"), "turns": len(req.get("contents", [])),
            "texts": texts,
        })
        reply = self._next_reply(sha)
        self._sleep_for(reply)
        if reply.startswith("429"):
            delay = reply.split(":", 1)[1] if ":" in reply else "0.2"
            return 429, {}, _error(429, "RESOURCE_EXHAUSTED",
                                   f"Quota exceeded. Please retry in {delay}s.", [
                                       {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                        "retryDelay": f"{delay}s"}])
        for code, status in ((500, "INTERNAL"), (503, "UNAVAILABLE"), (400, "INVALID_ARGUMENT"),
                             (401, "UNAUTHENTICATED")):
            if reply == str(code):
                return code, {}, _error(code, status, f"fake {status}")
        meta = {"usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 60,
                                  "totalTokenCount": 360},
                "modelVersion": self.model_version, "responseId": f"fake-{len(self.requests)}"}
        if reply == "blocked":
            return 200, {}, {"promptFeedback": {"blockReason": "SAFETY"}, **meta}
        if reply == "bad_body":  # an integer field as text: the SDK's response model rejects it
            meta["usageMetadata"] = {"promptTokenCount": "many", "candidatesTokenCount": 60,
                                     "totalTokenCount": 360}
        label = self.label_for(image or b"")
        if reply.startswith("ok:"):
            label = reply.split(":", 1)[1]
        text = json.dumps(verdict_for(label))
        finish = "STOP"
        if reply == "safety":
            return 200, {}, {"candidates": [{"finishReason": "SAFETY", "index": 0}], **meta}
        if reply == "max_tokens":
            text, finish = text[: len(text) // 2], "MAX_TOKENS"
        elif reply == "bad_json":
            text = "The lesion looks benign to me."
        elif reply == "bad_schema":
            bad = verdict_for(label)
            bad["confidence"] = 87.5  # a float where an integer is required
            bad["label"] = "probably benign"
            text = json.dumps(bad)
        elif reply == "empty":
            text = ""
        cand = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish,
                "index": 0}
        return 200, {}, {"candidates": [cand], **meta}


class FakeOpenAIServer(_FakeBase):
    kind = "openai"

    def _handle(self, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], Any]:
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, {"error": {"message": f"no route {path}", "type": "not_found"}}
        req = json.loads(body)
        image: bytes | None = None
        for msg in req.get("messages", []):
            content = msg.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url" and image is None:
                        url = part["image_url"]["url"]
                        image = base64.b64decode(url.split(",", 1)[1])
        sha = hashlib.sha256(image).hexdigest() if image is not None else None
        self._record(path, sha, {
            "temperature": req.get("temperature"), "seed": req.get("seed"),
            "response_format": req.get("response_format"), "turns": len(req.get("messages", [])),
            "model": req.get("model"),
        })
        reply = self._next_reply(sha)
        self._sleep_for(reply)
        if reply.startswith("429"):
            delay = reply.split(":", 1)[1] if ":" in reply else "0.2"
            return 429, {"retry-after": delay}, {"error": {"message": "rate limited",
                                                           "type": "rate_limit"}}
        for code in (500, 503, 400, 401):
            if reply == str(code):
                return code, {}, {"error": {"message": f"fake {code}", "type": "fake"}}
        label = self.label_for(image or b"")
        if reply.startswith("ok:"):
            label = reply.split(":", 1)[1]
        text: str | None = json.dumps(verdict_for(label))
        finish = "stop"
        refusal = None
        if reply in ("blocked", "safety"):
            text, finish = None, "content_filter"
        elif reply == "max_tokens":
            assert text is not None
            text, finish = text[: len(text) // 2], "length"
        elif reply == "bad_json":
            text = "The lesion looks benign to me."
        elif reply == "bad_schema":
            bad = verdict_for(label)
            bad["confidence"] = 87.5
            bad["label"] = "probably benign"
            text = json.dumps(bad)
        elif reply == "empty":
            text = ""
        return 200, {}, {
            "id": f"chatcmpl-fake-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model_version,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text, "refusal": refusal}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360},
        }


def main() -> None:
    """``python -m sonoaudit_classifier.testing.fake_servers [gemini|openai] [port] [latency]``:
    serve a fake for demos (every answer valid, label derived from the image bytes)."""
    import sys

    kind = sys.argv[1] if len(sys.argv) > 1 else "gemini"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    latency = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    cls = FakeGeminiServer if kind == "gemini" else FakeOpenAIServer
    server = cls(port=port, latency_s=latency).start()
    print(f"fake {kind} server on {server.url}", flush=True)  # noqa: T201
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
