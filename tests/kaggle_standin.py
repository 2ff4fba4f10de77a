"""A small stand-in for Kaggle's API on 127.0.0.1, for the official `kaggle` client in tests.

The client (kaggle 2.x) with KAGGLE_API_ENVIRONMENT=LOCALHOST calls http://localhost/api/v1/<Service>/<Method>
(POST, JSON body); HTTP_PROXY=http://127.0.0.1:<port> routes those requests here, with the absolute URL as the
request path. Only the endpoints the pipeline uses are served: competition download (a redirect to a zip),
submission limits, upload (start, PUT to the createUrl, create), the submission list, dataset status / create /
new version (with blob uploads) and kernel save. Anything else answers 404, so a client that wanders is seen.

State a test can set: `fail[method] = (status, message)` answers that method with an error, once per entry in
`fail_times[method]` (default: always); `allowed` (submissions left today), `score` / `private` / `error` (what
the next scoring gives) and `polls_to_score` (list calls a submission stays pending for).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

API = "/api/v1/"


class StandIn:
    def __init__(self, username: str = "tester", key: str = "secret"):
        self.auth = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.files: dict[str, bytes] = {}  # competition -> zip of its files
        self.uploads: dict[str, bytes] = {}  # upload token -> bytes received
        self.names: dict[str, str] = {}  # upload token -> the file name the client gave
        self.submissions: list[dict] = []  # newest last
        self.datasets: dict[str, dict] = {}  # owner/slug -> {"versions": [...], "files": [...]}
        self.kernels: dict[str, dict] = {}
        self.calls: list[str] = []  # every method called, in order
        self.fail: dict[str, tuple[int, str]] = {}
        self.fail_times: dict[str, int] = {}
        self.allowed, self.score, self.private, self.error, self.polls_to_score = 5, "0.875", "", "", 1
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_competition(self, name: str, folder: Path) -> None:
        """Serve `folder`'s files as the competition's download."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    z.write(path, path.relative_to(folder).as_posix())
        self.files[name] = buffer.getvalue()

    # --- the API methods: body in, (status, JSON) out ---

    def DownloadDataFiles(self, body: dict):  # noqa: N802 (Kaggle's method names)
        name = body.get("competitionName", "")
        if name not in self.files:
            return 404, {"code": 404, "message": f"Competition {name} not found"}
        return 302, f"http://localhost/files/{name}.zip"

    def GetSubmissionLimits(self, body: dict):  # noqa: N802
        return 200, {"numToday": 5 - self.allowed, "numTotal": len(self.submissions), "numAllowedNow": self.allowed}

    def StartSubmissionUpload(self, body: dict):  # noqa: N802
        token = f"sub{len(self.uploads)}"
        self.uploads[token], self.names[token] = b"", body.get("fileName", "")
        return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def StartBlobUpload(self, body: dict):  # noqa: N802
        token = f"blob{len(self.uploads)}"
        self.uploads[token], self.names[token] = b"", body.get("name", "")
        return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def CreateSubmission(self, body: dict):  # noqa: N802
        token = body.get("blobFileTokens", "")
        if not self.uploads.get(token):
            return 400, {"code": 400, "message": f"no uploaded file for token {token}"}
        self.allowed -= 1
        ref = 1000 + len(self.submissions)
        self.submissions.append({"ref": ref, "fileName": self.names[token], "description":
                                 body.get("submissionDescription", ""), "status": "PENDING", "polls": 0,
                                 "bytes": self.uploads[token], "date": "2026-12-06T12:00:00.000Z"})
        return 200, {"ref": ref, "message": "Successfully submitted"}

    def ListSubmissions(self, body: dict):  # noqa: N802
        listed = []
        for s in reversed(self.submissions):
            s["polls"] += 1
            if s["status"] == "PENDING" and s["polls"] > self.polls_to_score:
                s["status"] = "ERROR" if self.error else "COMPLETE"
                scores = ("", "") if self.error else (self.score, self.private)
                s["publicScore"], s["privateScore"], s["errorDescription"] = *scores, self.error
            listed.append({k: v for k, v in s.items() if k not in ("polls", "bytes")})
        return 200, {"submissions": listed}

    def GetDatasetStatus(self, body: dict):  # noqa: N802
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        return 200, {"status": "READY"}

    def CreateDataset(self, body: dict):  # noqa: N802
        ref = f"{body['ownerSlug']}/{body['slug']}"
        self.datasets[ref] = {"versions": ["initial"], "private": body.get("isPrivate"),
                              "files": [self.names[f["token"]] for f in body.get("files", [])]}
        return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}

    def CreateDatasetVersion(self, body: dict):  # noqa: N802
        ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
        self.datasets[ref]["versions"].append(body["body"].get("versionNotes", ""))
        self.datasets[ref]["files"] = [self.names[f["token"]] for f in body["body"].get("files", [])]
        return 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"}

    def SaveKernel(self, body: dict):  # noqa: N802
        self.kernels[body["slug"]] = body
        return 200, {"ref": body["slug"], "url": f"http://localhost/code/{body['slug']}", "versionNumber": 1}

    def answer(self, method: str, body: dict):
        with self.lock:
            self.calls.append(method)
            if method in self.fail:
                left = self.fail_times.get(method)
                if left is None or left > 0:
                    if left is not None:
                        self.fail_times[method] = left - 1
                    status, message = self.fail[method]
                    return status, {"code": status, "message": message}
            serve = getattr(self, method, None)
            if serve is None or method.startswith("_"):
                return 404, {"code": 404, "message": f"the stand-in does not serve {method}"}
            return serve(body)


def handler(state: StandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not path.startswith(API):
                return self.reply(404, {"code": 404, "message": path})
            if self.headers.get("Authorization") != state.auth:
                return self.reply(401, {"code": 401, "message": "Unauthenticated"})
            method = path[len(API):].split("/")[-1]
            status, payload = state.answer(method, json.loads(body or b"{}"))
            if status == 302:
                self.send_response(302)
                self.send_header("Location", payload)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self.reply(status, payload)

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            name = path.removeprefix("/files/").removesuffix(".zip")
            if not path.startswith("/files/") or name not in state.files:
                return self.reply(404, {"code": 404, "message": path})
            data = state.files[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None

        def do_PUT(self) -> None:  # noqa: N802
            token = urlsplit(self.path).path.removeprefix("/upload/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if token not in state.uploads:
                return self.reply(404, {"code": 404, "message": f"no upload {token}"})
            state.uploads[token] += body
            return self.reply(200, {})

        def reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
