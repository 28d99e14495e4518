"""A mock OpenAI-compatible server that logs every request it gets (replay tests only).

``python mock_server.py --log LOG --port-file F --tokenizer NAME --max-seconds S --max-requests N``
binds 127.0.0.1 on a free port, writes the port to F, answers
``/v1/completions`` and ``/v1/chat/completions`` (streamed or not) with
exactly ``max_tokens`` one-token words, and appends one JSON line per request
to LOG: arrival time, path, the prompt's token count under the replay
tokenizer (the messages' contents summed, roles not counted), the output cap
and the prompt text (token-id prompts decoded). It stops by itself after S seconds or N requests.
Runs in the side environment (it needs ``transformers``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    lock = threading.Lock()
    log = args.log.open("a", encoding="utf-8")
    served = [0]

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):  # the JSONL log is the record
            pass

        def _send_json(self, obj, status=200):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.startswith("/v1/models"):
                self._send_json({"object": "list", "data": [{"id": "mock", "object": "model"}]})
            elif self.path.startswith(("/health", "/ping", "/version")):
                self._send_json({"status": "ok"})
            else:
                self._send_json({"error": "not found"}, 404)

        def do_POST(self):
            arrived = time.time()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            chat = self.path.startswith("/v1/chat/completions")
            if not chat and not self.path.startswith("/v1/completions"):
                self._send_json({"error": "not found"}, 404)
                return
            if chat:
                messages = body.get("messages", [])
                parts = [(m.get("role"), _content_text(m.get("content"))) for m in messages]
            else:
                prompt = body.get("prompt", "")
                if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
                    prompt = tokenizer.decode(prompt)  # vLLM's bench sends token ids
                parts = [("prompt", prompt if isinstance(prompt, str) else json.dumps(prompt))]
            cap = body.get("max_completion_tokens", body.get("max_tokens"))
            record = {
                "t": arrived,
                "path": self.path,
                "prompt_tokens": sum(count(text) for _, text in parts),
                "message_tokens": [count(text) for _, text in parts],
                "roles": [role for role, _ in parts],
                "max_tokens": cap,
                "ignore_eos": body.get("ignore_eos"),
                "stream": bool(body.get("stream")),
                "text": [text for _, text in parts],
            }
            with lock:
                log.write(json.dumps(record) + "\n")
                log.flush()
                served[0] += 1
                if served[0] >= args.max_requests:
                    threading.Thread(target=server.shutdown, daemon=True).start()
            n_out = int(cap) if cap else 1
            self._answer(body, chat, record["prompt_tokens"], n_out)

        def _answer(self, body, chat, n_in, n_out):
            words = ["a"] * n_out
            usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
            created, model = int(time.time()), body.get("model", "mock")
            kind = "chat.completion" if chat else "text_completion"

            def choice(text, final):
                finish = "length" if final else None
                if chat:
                    return {
                        "index": 0,
                        "delta": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                return {"index": 0, "text": text, "finish_reason": finish}

            if not body.get("stream"):
                text = " ".join(words)
                c = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length"}
                )
                self._send_json(
                    {
                        "id": "mock",
                        "object": kind,
                        "created": created,
                        "model": model,
                        "choices": [c],
                        "usage": usage,
                    }
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            # Token by token up to 8 chunks, then one chunk with the rest: enough for TTFT/ITL.
            pieces = [("a" if i == 0 else " a") for i in range(min(n_out, 8))]
            if n_out > 8:
                pieces.append(" " + " ".join(words[8:]))
            for i, piece in enumerate(pieces):
                chunk = {
                    "id": "mock",
                    "object": kind + (".chunk" if chat else ""),
                    "created": created,
                    "model": model,
                    "choices": [choice(piece, i == len(pieces) - 1)],
                }
                self._chunk("data: " + json.dumps(chunk) + "\n\n")
            tail = {
                "id": "mock",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            self._chunk("data: " + json.dumps(tail) + "\n\n")
            self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

        def _chunk(self, text):
            data = text.encode()
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    timer = threading.Timer(args.max_seconds, server.shutdown)
    timer.daemon = True
    timer.start()
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(args.port_file)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        timer.cancel()
        server.server_close()
        log.close()


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


if __name__ == "__main__":
    main()
