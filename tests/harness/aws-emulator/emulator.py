"""AWS emulator for the tidb-ebs-backup test harness: moto server plus a WSGI layer that adds
fault/latency injection, AWS request limits, a request log, EBS direct APIs for EC2-made
snapshots and a JSON control API under /_emulator. See README.md.

Usage: python emulator.py --host 127.0.0.1 --port 5055 [--pid-file FILE]
"""

import argparse
import collections
import io
import itertools
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moto  # noqa: E402
from moto.moto_api._internal.models import moto_api_backend  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, run_simple  # noqa: E402

import snapshots  # noqa: E402
from snapshots import STATE, EbsError  # noqa: E402

UNSIGNED_STS_ACTIONS = {"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}
EC2_ID = re.compile(r"\b(vol|snap|i)-[0-9a-f]{8,17}\b")
THROTTLE = {  # service -> (status, code) used when a token bucket is empty
    "ec2": (503, "RequestLimitExceeded"),
    "ebs": (400, "RequestThrottledException"),
    "s3": (503, "SlowDown"),
}
LOG_CAPACITY = 200_000


# ---- request classification ----------------------------------------------------------------------


class Req:
    """What the layer needs to know about one AWS request."""

    def __init__(self, environ: dict):
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO", "")
        self.query_string = environ.get("QUERY_STRING", "")
        self.query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        self.body = _read_form_body(environ)
        self.params = {**self.query, **dict(parse_qsl(self.body, keep_blank_values=True))}
        self.service, self.region = _service_region(environ, self.params)
        self.action = _action(self, environ)


def _read_form_body(environ: dict) -> str:
    """Form-encoded (query protocol) bodies are small; read them and put them back for moto."""
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return ""
    length = environ.get("CONTENT_LENGTH")
    data = environ["wsgi.input"].read(int(length)) if length else environ["wsgi.input"].read()
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    return data.decode("utf-8", "replace")


def _service_region(environ: dict, params: dict) -> tuple[str, str]:
    # SigV4: "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ec2/aws4_request, ..."
    scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/aws4_request", environ.get("HTTP_AUTHORIZATION", ""))
    if not scope:  # presigned URL
        scope = re.search(r"^[^/]+/\d+/([^/]+)/([^/]+)/aws4_request", params.get("X-Amz-Credential", ""))
    if scope:
        return scope.group(2).lower(), scope.group(1)
    if params.get("Action") in UNSIGNED_STS_ACTIONS:
        return "sts", "us-east-1"
    return "unknown", "us-east-1"


def _access_key(environ: dict, params: dict) -> str:
    """The access key id a request is signed with ("" when unsigned)."""
    found = re.search(r"Credential=([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    return found.group(1) if found else params.get("X-Amz-Credential", "").split("/")[0]


def _action(req: Req, environ: dict) -> str:
    if req.service == "s3":
        return _s3_operation(req, environ)
    if req.service == "ebs":
        return _ebs_operation(req.method, req.path)
    if "Action" in req.params:
        return req.params["Action"]
    target = environ.get("HTTP_X_AMZ_TARGET")
    return target.split(".")[-1] if target else f"{req.method} {req.path}"


def _ebs_operation(method: str, path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[:1] != ["snapshots"]:
        return f"{method} {path}"
    if len(parts) == 1 and method == "POST":
        return "StartSnapshot"
    if len(parts) == 3 and parts[1] == "completion":
        return "CompleteSnapshot"
    if len(parts) == 3 and parts[2] == "changedblocks":
        return "ListChangedBlocks"
    if len(parts) == 3 and parts[2] == "blocks":
        return "ListSnapshotBlocks"
    if len(parts) == 4 and parts[2] == "blocks":
        return "GetSnapshotBlock" if method == "GET" else "PutSnapshotBlock"
    return f"{method} {path}"


def _s3_operation(req: Req, environ: dict) -> str:
    """Path-style S3 operation names for the common calls; other sub-resources get a generic name."""
    parts = req.path.lstrip("/").split("/", 1)
    bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
    q, m = req.query, req.method
    if not bucket:
        return "ListBuckets"
    if key:
        if "uploads" in q and m == "POST":
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload",
                    "GET": "ListParts"}.get(m, m)
        if m == "PUT":
            return "CopyObject" if "HTTP_X_AMZ_COPY_SOURCE" in environ else "PutObject"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(m, m + "Object")
    if "delete" in q and m == "POST":
        return "DeleteObjects"
    if m == "GET" and not (set(q) - {"list-type", "prefix", "delimiter", "max-keys", "continuation-token",
                                     "start-after", "marker", "encoding-type", "fetch-owner"}):
        return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
    sub = next(iter(q), "")
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}.get(m, m)
    return f"{verb}Bucket{sub[:1].upper() + sub[1:]}" if sub else f"{verb}Bucket" if m != "PUT" else "CreateBucket"


# ---- error rendering ---------------------------------------------------------------------------------


def error_response(service: str, status: int, code: str, message: str = "", reason: str | None = None,
                   style: str | None = None) -> tuple[int, list, bytes]:
    style = style or {"ec2": "ec2", "s3": "s3", "ebs": "json"}.get(service, "query")
    rid = str(uuid.uuid4())
    message = message or code
    if style == "json":
        body: dict = {"Message": message}
        if reason:
            body["Reason"] = reason
        return status, [("Content-Type", "application/json"), ("x-amzn-ErrorType", code),
                        ("x-amzn-RequestId", rid)], json.dumps(body).encode()
    c, msg = escape(code), escape(message)
    if style == "ec2":
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{c}</Code>'
               f"<Message>{msg}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
    elif style == "s3":
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{c}</Code><Message>{msg}</Message>'
               f"<RequestId>{rid}</RequestId></Error>")
    else:  # awsQuery services (sts, iam, ...)
        kind = "Receiver" if status >= 500 else "Sender"
        xml = (f"<ErrorResponse><Error><Type>{kind}</Type><Code>{c}</Code><Message>{msg}</Message></Error>"
               f"<RequestId>{rid}</RequestId></ErrorResponse>")
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], xml.encode()


def _error_code(headers: list, body: bytes) -> str | None:
    for name, value in headers:
        if name.lower() == "x-amzn-errortype":
            return value.split(":")[0]
    m = re.search(rb"<Code>([^<]+)</Code>", body)
    if m:
        return m.group(1).decode()
    try:
        data = json.loads(body)
        return str(data.get("__type") or data.get("code") or data.get("Code") or "").split("#")[-1] or None
    except (ValueError, AttributeError):
        return None


# ---- extension state besides snapshots -------------------------------------------------------------


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.ids = itertools.count(1)

    def add(self, rule: dict) -> dict:
        allowed = {"service", "action", "method", "path", "status", "code", "message", "reason", "style",
                   "delay_ms", "times"}
        unknown = set(rule) - allowed
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        if "status" not in rule and "delay_ms" not in rule:
            raise ValueError("a rule needs status and/or delay_ms")
        if "path" in rule:
            re.compile(rule["path"])
        rule = {"times": -1, **rule, "id": next(self.ids), "hits": 0}
        if isinstance(rule.get("action"), str):
            rule["action"] = [rule["action"]]
        with self.lock:
            self.rules.append(rule)
        return rule

    def match(self, req: Req) -> dict | None:
        """First rule that matches and has uses left; consumes one use."""
        with self.lock:
            for r in self.rules:
                if r["times"] == 0:
                    continue
                if r.get("service") and r["service"] != req.service:
                    continue
                if r.get("action") and req.action not in r["action"]:
                    continue
                if r.get("method") and r["method"].upper() != req.method:
                    continue
                if r.get("path") and not re.search(r["path"], req.path):
                    continue
                if r["times"] > 0:
                    r["times"] -= 1
                r["hits"] += 1
                return dict(r)
        return None

    def clear(self, rule_id: int | None = None) -> None:
        with self.lock:
            self.rules = [r for r in self.rules if rule_id is not None and r["id"] != rule_id]


class RequestLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: collections.deque = collections.deque(maxlen=LOG_CAPACITY)

    def add(self, entry: dict) -> None:
        with self.lock:
            self.entries.append(entry)

    def query(self, filters: dict) -> list[dict]:
        since = float(filters.get("since", 0))
        with self.lock:
            items = list(self.entries)
        return [e for e in items if e["time"] >= since
                and all(e.get(k) == filters[k] for k in ("action", "service", "error_code") if k in filters)]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


class Latency:
    """Per-action service time: every request of the action that reaches moto (or our EBS handlers) waits
    fixed_ms + jitter_ms * u, u uniform in [0, 1). The wait is a plain sleep on the request's own thread,
    outside every lock, so concurrent calls overlap; state changes keep their own locks. With a seed the
    n-th call of an action always draws the same u, whatever the interleaving of threads."""

    KEYS = {"fixed_ms", "jitter_ms", "apply"}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.models: dict[str, dict] = {}
            self.seed: int | None = None
            self.calls: collections.Counter = collections.Counter()

    def configure(self, body: dict) -> None:
        if not isinstance(body, dict):
            raise ValueError("body must be an object: {action: model | null, \"seed\": int | null}")
        models = {}
        for action, model in body.items():
            if action == "seed":
                if model is not None and not isinstance(model, int):
                    raise ValueError("seed must be an integer or null")
                continue
            if model is None:
                models[action] = None
                continue
            if not isinstance(model, dict):
                raise ValueError(f"latency model of {action} must be an object or null")
            unknown = set(model) - self.KEYS
            if unknown:
                raise ValueError(f"unknown latency keys for {action}: {sorted(unknown)}")
            m = {"fixed_ms": float(model.get("fixed_ms", 0)), "jitter_ms": float(model.get("jitter_ms", 0)),
                 "apply": model.get("apply", "before")}
            if m["fixed_ms"] < 0 or m["jitter_ms"] < 0:
                raise ValueError(f"fixed_ms and jitter_ms of {action} must be >= 0")
            if m["apply"] not in ("before", "after"):
                raise ValueError(f"apply of {action} must be before or after")
            models[action] = m
        with self.lock:
            for action, m in models.items():
                if m is None:
                    self.models.pop(action, None)
                else:
                    self.models[action] = m
            if "seed" in body:
                self.seed = body["seed"]
                self.calls.clear()

    def view(self) -> dict:
        with self.lock:
            return {"seed": self.seed, **{a: dict(m) for a, m in self.models.items()},
                    "calls": dict(self.calls)}

    def draw(self, action: str) -> tuple[float, str]:
        """(seconds to wait, "before" | "after") for one request of `action`; (0, "before") without a model."""
        with self.lock:
            model = self.models.get(action) or self.models.get("*")
            if model is None:
                return 0.0, "before"
            n = self.calls[action]
            self.calls[action] += 1
            seed = self.seed
        u = random.Random(f"{seed}/{action}/{n}").random() if seed is not None else random.random()
        return (model["fixed_ms"] + model["jitter_ms"] * u) / 1000, model["apply"]


FAULTS = Faults()
LOG = RequestLog()
LATENCY = Latency()


def reset_all() -> None:
    moto_api_backend.reset()
    STATE.reset()
    FAULTS.clear()
    LOG.clear()
    LATENCY.reset()


# ---- control API --------------------------------------------------------------------------------------


def control(method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
    parts = path.strip("/").split("/")[1:]  # drop "_emulator"
    head = parts[0] if parts else ""
    if head == "health" and method == "GET":
        return 200, {"ok": True, "moto": moto.__version__}
    if head == "reset" and method == "POST":
        reset_all()
        return 200, {"ok": True}
    if head == "config":
        if method == "POST":
            if "snapshot_pending_seconds" in body:
                STATE.pending_seconds = float(body["snapshot_pending_seconds"])
        return 200, {"snapshot_pending_seconds": STATE.pending_seconds, "volumes": STATE.volume_cfg}
    if head == "volumes" and len(parts) == 2 and method == "POST":
        cfg = STATE.volume_cfg.setdefault(parts[1], {})
        if body.get("end_state", "completed") not in ("completed", "error"):
            raise ValueError("end_state must be completed or error")
        cfg.update({k: body[k] for k in ("pending_seconds", "end_state") if k in body})
        return 200, {"volume_id": parts[1], **cfg}
    if head == "volumes" and len(parts) == 3 and parts[2] == "blocks":
        volume = snapshots.find_volume(parts[1])
        if volume is None:
            return 404, {"error": f"volume {parts[1]} not found"}
        m = STATE.update_blocks(volume, body or {}) if method == "POST" else STATE.volume_map(volume)
        return 200, {"volume_id": volume.id, "volume_size_gib": volume.size, "block_count": m.count()}
    if head == "snapshots" and len(parts) == 2 and method == "POST":
        if STATE.find_snapshot(parts[1]) is None:
            return 404, {"error": f"snapshot {parts[1]} not found"}
        return 200, STATE.set_snapshot(parts[1], body)
    if head == "limits":
        if method == "POST":
            with STATE.lock:
                for k in snapshots.DEFAULT_LIMITS:
                    if k in body:
                        STATE.limits[k] = body[k]
                for action, cfg in (body.get("buckets") or {}).items():
                    if cfg is None:
                        STATE.buckets.pop(action, None)
                    else:
                        STATE.buckets[action] = {"burst": float(cfg["burst"]),
                                                 "refill_per_second": float(cfg["refill_per_second"])}
                    STATE.bucket_state.pop(action, None)
                if "enabled" in body:
                    STATE.bucket_state.clear()  # buckets start full
        return 200, {**STATE.limits, "buckets": STATE.buckets}
    if head == "faults":
        if method == "POST":
            rules = body["rules"] if "rules" in body else [body]
            return 200, {"rules": [FAULTS.add(r) for r in rules]}
        if method == "DELETE":
            FAULTS.clear(int(parts[1]) if len(parts) > 1 else None)
            return 200, {"ok": True}
        return 200, {"rules": FAULTS.rules}
    if head == "latency":
        if method == "POST":
            LATENCY.configure(body)
        elif method == "DELETE":
            LATENCY.reset()
        elif method != "GET":
            return 404, {"error": f"no control endpoint {method} {path}"}
        return 200, LATENCY.view()
    if head == "requests":
        if method == "DELETE":
            LOG.clear()
            return 200, {"ok": True}
        return 200, {"requests": LOG.query(query)}
    return 404, {"error": f"no control endpoint {method} {path}"}


# ---- WSGI layer ---------------------------------------------------------------------------------------


class EmulatorApp:
    def __init__(self, inner: Callable) -> None:
        self.inner = inner

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator"):
            return self._control(environ, start_response)
        if path.startswith("/moto-api"):
            return self.inner(environ, start_response)
        return self._aws(environ, start_response)

    def _control(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH")
        raw = environ["wsgi.input"].read(int(length)) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
            status, out = control(environ["REQUEST_METHOD"], environ["PATH_INFO"], query, body)
        except (ValueError, KeyError, TypeError, re.error) as e:
            status, out = 400, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(out, default=str).encode()
        start_response(_status_line(status), [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(data)))])
        return [data]

    def _aws(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.time()
        req = Req(environ)
        entry: dict = {"time": started, "service": req.service, "region": req.region, "action": req.action,
                       "method": req.method, "path": req.path, "injected": False, "latency_ms": 0,
                       "user_agent": environ.get("HTTP_USER_AGENT", ""), "access_key": _access_key(environ, req.params)}
        if req.action == "AssumeRoleWithWebIdentity":
            # Who asked for which role, so a test can tell whose token was exchanged.
            entry["role_arn"] = req.params.get("RoleArn", "")
            entry["web_identity_token"] = req.params.get("WebIdentityToken", "")
        rule = FAULTS.match(req)
        if rule and rule.get("delay_ms"):
            time.sleep(rule["delay_ms"] / 1000)
        result: tuple[int, list, bytes] | None = None
        if rule and rule.get("status"):
            entry["injected"] = True
            result = error_response(req.service, int(rule["status"]), rule.get("code") or "InternalError",
                                    rule.get("message", ""), rule.get("reason"), rule.get("style"))
        elif not STATE.take_token(req.action):
            entry["injected"] = True
            status, code = THROTTLE.get(req.service, (400, "Throttling"))
            result = error_response(req.service, status, code, "Request limit exceeded.",
                                    "ACCOUNT_THROTTLED" if req.service == "ebs" else None)
        wait, when = (0.0, "before") if entry["injected"] else LATENCY.draw(req.action)
        entry["latency_ms"] = round(wait * 1000, 1)
        if wait and when == "before":
            time.sleep(wait)  # no lock is held here: concurrent requests wait side by side
        if not entry["injected"] and req.service == "ebs" and req.action in ("ListSnapshotBlocks", "ListChangedBlocks"):
            result = self._ebs_direct(req)

        if result is None:
            status, headers, chunks = self._call_inner(environ, req.service != "s3")
        else:
            status, headers, body = result
            headers = headers + [("Content-Length", str(len(body)))]
            chunks = [body]
        body = b"".join(chunks) if isinstance(chunks, list) else b""
        entry.update(status=status, duration_ms=round((time.time() - started) * 1000, 1),
                     error_code=_error_code(headers, body) if status >= 400 else None)
        text = f"{req.path}?{req.query_string}&{req.body}"
        if req.action in ("CreateSnapshot", "CreateSnapshots") and status < 400:
            text += body.decode("utf-8", "replace")
        ids = {m.group(0) for m in EC2_ID.finditer(text)}
        entry["volume_ids"] = sorted(i for i in ids if i.startswith("vol-"))
        entry["snapshot_ids"] = sorted(i for i in ids if i.startswith("snap-"))
        if wait and when == "after":
            time.sleep(wait)  # the change is made and visible; only the answer is late
            entry["duration_ms"] = round((time.time() - started) * 1000, 1)
        LOG.add(entry)
        start_response(_status_line(status), headers)
        return chunks

    def _ebs_direct(self, req: Req) -> tuple[int, list, bytes] | None:
        snap_id = req.path.strip("/").split("/")[1]
        if snapshots.ebs_direct_snapshot(snap_id):
            return None  # made by moto's EBS StartSnapshot: stock behaviour
        try:
            if req.action == "ListSnapshotBlocks":
                out = snapshots.list_snapshot_blocks(snap_id, req.query)
            else:
                out = snapshots.list_changed_blocks(snap_id, req.query)
        except EbsError as e:
            return error_response("ebs", e.status, e.code, e.message, e.reason)
        return 200, [("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))], \
            json.dumps(out).encode()

    def _call_inner(self, environ: dict, buffer: bool) -> tuple[int, list, Any]:
        captured: dict = {}

        def sr(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        it = self.inner(environ, sr)
        if "status" not in captured:  # app that starts the response lazily
            it = list(it)
        status = int(captured["status"].split()[0])
        if buffer or status >= 400:
            try:
                chunks = list(it)
            finally:
                if hasattr(it, "close"):
                    it.close()
            return status, captured["headers"], chunks
        return status, captured["headers"], it


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _speed_up_moto() -> None:
    """Costs of moto's server that are pure overhead (requests hold the GIL while they compute, so this is
    what serialises concurrent calls):
    - the host dispatcher lists moto's package directory on every request, under its one lock, and every
      action lookup runs inspect.getmembers over the whole response class: cached (about a third of the CPU
      time of a small EC2 call);
    - every EC2 resource reads its own tags with a scan of all tags of the region (a regex per tag), so
      rendering n tagged resources costs O(n x all tags): one resource id without wildcards is looked up
      directly, with the same answer."""
    from moto import backends
    from moto.core import responses
    from moto.ec2.models.tags import TagBackend
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    scan_tags = TagBackend.describe_tags

    def describe_tags(self: Any, filters: dict | None = None) -> list[dict]:
        ids = (filters or {}).get("resource-id")
        if filters is None or set(filters) != {"resource-id"} or len(ids) != 1 or re.search(r"[*?\[\\]", ids[0]):
            return scan_tags(self, filters)
        rid = ids[0]
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
        return [{"resource_id": rid, "key": k, "value": v, "resource_type": kind}
                for k, v in dict(self.tags.get(rid, {})).items()]

    TagBackend.describe_tags = describe_tags

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    names: dict[type, list[str]] = {}
    original = responses.method_names_from_class

    def method_names(clazz: Any) -> list[str]:
        found = names.get(clazz)
        if found is None:
            found = names[clazz] = original(clazz)
        return found

    responses.method_names_from_class = method_names


def build_app() -> EmulatorApp:
    snapshots.install()
    _speed_up_moto()
    return EmulatorApp(DomainDispatcherApplication(create_backend_app))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--pid-file")
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = build_app()
    # Hundreds of clients may connect at once (one CreateSnapshots per instance): werkzeug's backlog of 128
    # would drop SYNs beyond it and the kernel would retry them only after a second.
    BaseWSGIServer.request_queue_size = 1024
    print(f"aws-emulator (moto {moto.__version__}) listening on http://{args.host}:{args.port}", flush=True)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
