#!/usr/bin/env python3
"""A small Kubernetes API stand-in on loopback, faithful enough for the real kubectl and for kube-rs:
discovery, Nodes (get, list, watch with fieldSelector / resourceVersion / bookmarks, merge,
strategic-merge and JSON patches with resourceVersion preconditions; metadata-only lists), Events both
ways a real API server serves them: events.k8s.io/v1 (what kube's Recorder writes, series patched in
place) and core/v1 (what kubectl reads), one store seen through both; and coordination.k8s.io/v1
Leases (list with label selectors, get, create, update with resourceVersion conflicts, delete);
CustomResourceDefinitions and the resources they define, and RuntimeClasses (custom_resources.py).

No API server can be installed on the test machines; this is the one stand-in the tests use.
Test-only controls live under /_test/. Prints "PORT <n>" on stdout once listening.
"""
import bisect
import copy
import json
import sys
import threading
import time
import uuid
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import custom_resources as cr  # noqa: E402

LOCK = threading.Condition()
STATE = {
    "rv": 1,
    "nodes": {},  # name -> node object
    "history": [],  # (rv, type, node object) for watches
    "events": [],  # core/v1 Events posted as such
    "events_v1": {},  # (namespace, name) -> events.k8s.io/v1 Event
    "leases": {},  # (namespace, name) -> Lease
    "objects": {},  # (group, plural) -> {(namespace, name): object}: CRDs, custom resources, RuntimeClasses
    "object_history": [],  # (rv, group, plural, type, object) for their watches
    "open_watches": 0,
    "conflicts": 0,  # next N node patches answer 409
    "fail_requests": 0,  # next N requests (any) answer 503
    "requests": [],
    "watch_generation": 0,  # bumped to drop every open watch
    "watch_cap": 3600,  # seconds a watch may last at most (/_test/watch-cap shortens it)
    # kind -> ([rv, ...], [(rv, type, object), ...]): what each kind's watches replay, searched by rv
    # (a watch wakes only for its own kind, and for its own object when it selects one by name).
    "hist": {},
    "watch_bytes": {},  # "user agent|resource" -> bytes streamed to watches (the requests log has the rest)
    "simulated": None,  # the simulated kubelets' thread, once started
    "simulated_writes": 0,  # what they wrote (not requests on this socket, but load on a real server)
}
WATCHERS = {}  # (kind, name or None) -> {threading.Event}
EVENT_CACHE = {}  # (kind, rv, rendering) -> the event's bytes, shared by every watch that streams it


def remember(kind, rv, type_, obj):
    """Keep a version for `kind`'s watches and wake the watches it concerns (under LOCK)."""
    rvs, entries = STATE["hist"].setdefault(kind, ([], []))
    rvs.append(int(rv))
    entries.append((int(rv), type_, obj))
    name = obj["metadata"].get("name")
    for key in ((kind, None), (kind, name)):
        for ev in WATCHERS.get(key, ()):
            ev.set()


def history_after(kind, since):
    rvs, entries = STATE["hist"].get(kind, ([], []))
    return entries[bisect.bisect_right(rvs, since):]


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def next_rv():
    STATE["rv"] += 1
    return str(STATE["rv"])


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def record(kind, node):
    rv = next_rv()
    node["metadata"]["resourceVersion"] = rv
    kept = copy.deepcopy(node)
    STATE["history"].append((int(rv), kind, kept))
    remember("nodes", rv, kind, kept)
    LOCK.notify_all()


def simulate_kubelets(names, status_every, lease_every):
    """What the kubelets of nodes without an agent do to the API: renew their node Lease in
    kube-node-lease (every `lease_every` s, kubelet's default 10) and write their status with a new
    heartbeat (every `status_every` s while nothing changes, kubelet's default 5 minutes), each node
    at its own phase of the period."""
    start, n = time.time(), len(names)
    done_status = done_lease = 0
    while True:
        time.sleep(0.1)
        elapsed = time.time() - start
        want_status = int(elapsed * n / status_every)
        want_lease = int(elapsed * n / lease_every)
        with LOCK:
            for i in range(done_status, want_status):
                node = STATE["nodes"].get(names[i % n])
                if node is None:
                    continue
                node = copy.deepcopy(node)
                for c in node["status"].get("conditions", []):
                    c["lastHeartbeatTime"] = now()
                STATE["nodes"][names[i % n]] = node
                record("MODIFIED", node)
            for i in range(done_lease, want_lease):
                lease = STATE["leases"].get(("kube-node-lease", names[i % n]))
                if lease is not None:
                    lease["spec"]["renewTime"] = now_micro()
                    lease["metadata"]["resourceVersion"] = next_rv()
            STATE["simulated_writes"] += (want_status - done_status) + (want_lease - done_lease)
        done_status, done_lease = want_status, want_lease


def now_micro():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if k.startswith("$"):
            continue  # strategic-merge directives: not needed for maps of strings
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def pointer(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")] if path else []


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = pointer(op["path"])
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ValueError("test failed at " + op["path"])
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ValueError("replace of missing " + op["path"])
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                if last not in parent:
                    raise ValueError("remove of missing " + op["path"])
                del parent[last]
        else:
            raise ValueError("unsupported op " + kind)
    return doc


def field_match(obj, selector):
    if not selector:
        return True
    for term in selector.split(","):
        if "=" not in term:
            continue
        neg = "!=" in term
        k, v = term.split("!=" if neg else ("==" if "==" in term else "="), 1)
        cur = obj
        for p in k.split("."):
            cur = cur.get(p, {}) if isinstance(cur, dict) else {}
        cur = cur if isinstance(cur, str) else ""
        if (cur == v) == neg:
            return False
    return True


def label_match(obj, selector):
    """Equality- and set-based label selectors: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in re.split(r",(?![^(]*\))", selector):
        term = term.strip()
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            inside = m.group(1) in labels and labels[m.group(1)] in values
            if inside != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def new_node(name, arch="amd64", labels=None, annotations=None):
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": now(),
                     "labels": dict({"kubernetes.io/hostname": name, "kubernetes.io/arch": arch,
                                     "kubernetes.io/os": "linux"}, **(labels or {})),
                     "annotations": dict(annotations or {})},
        "spec": {},
        "status": {"nodeInfo": {"architecture": arch, "operatingSystem": "linux",
                                "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.32.0"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                   "addresses": [{"type": "Hostname", "address": name}]},
    }


EVENTS_V1 = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "events.k8s.io/v1",
    "resources": [
        {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
         "verbs": ["create", "get", "list", "watch", "patch"], "shortNames": ["ev"]},
    ],
}

LEASES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "coordination.k8s.io/v1",
    "resources": [
        {"name": "leases", "singularName": "lease", "namespaced": True, "kind": "Lease",
         "verbs": ["create", "delete", "get", "list", "update", "watch"]},
    ],
}

GROUPS = {
    "kind": "APIGroupList", "apiVersion": "v1",
    "groups": [
        {"name": "events.k8s.io", "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"}},
        {"name": "coordination.k8s.io", "versions": [{"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "coordination.k8s.io/v1", "version": "v1"}},
    ],
}


def core_event(ev):
    """An events.k8s.io/v1 Event as core/v1 shows it (the API server's conversion)."""
    series = ev.get("series") or {}
    first = ev.get("eventTime")
    last = series.get("lastObservedTime") or first
    meta = dict(ev.get("metadata") or {})
    return {
        "kind": "Event", "apiVersion": "v1", "metadata": meta,
        "involvedObject": ev.get("regarding") or {},
        "related": ev.get("related"),
        "reason": ev.get("reason"), "message": ev.get("note"), "type": ev.get("type"),
        "action": ev.get("action"),
        "source": {"component": ev.get("reportingController")},
        "reportingComponent": ev.get("reportingController"),
        "reportingInstance": ev.get("reportingInstance"),
        "eventTime": first,
        "firstTimestamp": first, "lastTimestamp": last,
        "count": series.get("count", 1),
    }


RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["get", "list", "watch", "patch", "update", "create", "delete"], "shortNames": ["no"]},
        {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
         "verbs": ["get", "patch", "update"]},
        {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
         "verbs": ["create", "get", "list", "watch", "patch"], "shortNames": ["ev"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["get", "list"], "shortNames": ["ns"]},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["get", "list"], "shortNames": ["po"]},
    ],
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, every keep-alive response
    # would wait ~40 ms for the client's delayed ACK — latency no API server adds.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        rec = getattr(self, "_record", None)
        if rec is not None:
            rec["bytes"] = rec.get("bytes", 0) + len(data)
            rec["code"] = code
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self._body

    def route(self, method):
        # Read the whole request first, whatever the answer: an unread body would be taken for the
        # next request on this keep-alive connection.
        n = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(n) if n else b""
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        self._record = {"method": method, "path": path, "query": q,
                        "content_type": self.headers.get("Content-Type", ""),
                        "user_agent": self.headers.get("User-Agent", ""),
                        "accept": self.headers.get("Accept", ""),
                        "t": time.time()}
        with LOCK:
            STATE["requests"].append(self._record)
            if not path.startswith("/_test") and STATE["fail_requests"] > 0:
                STATE["fail_requests"] -= 1
                return self.send_json(503, status(503, "ServiceUnavailable", "injected outage"))
        if path.startswith("/_test/"):
            return self.control(method, path, q)
        if method == "GET":
            if path == "/version":
                return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
            if path == "/api":
                return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.headers.get("Host", "")}]})
            if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
                with LOCK:
                    defs = cr.definitions(STATE["objects"])
                doc = cr.openapi_root(defs) if path == "/openapi/v3" else cr.openapi_gv(defs, path[len("/openapi/v3/"):])
                if doc is None:
                    return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
                return self.send_json(200, doc)
            if path == "/apis":
                with LOCK:
                    served = cr.discovery_groups(cr.definitions(STATE["objects"]))
                return self.send_json(200, dict(GROUPS, groups=GROUPS["groups"] + served))
            if path == "/apis/events.k8s.io/v1":
                return self.send_json(200, EVENTS_V1)
            if path == "/apis/coordination.k8s.io/v1":
                return self.send_json(200, LEASES)
            if path == "/api/v1":
                return self.send_json(200, RESOURCES)
            if path == "/api/v1/nodes":
                return self.watch_nodes(q) if q.get("watch") in ("true", "1") else self.list_nodes(q)
            if path == "/api/v1/pods" or (path.startswith("/api/v1/namespaces/") and path.endswith("/pods")):
                # No pods run here; `kubectl describe node` asks for the node's.
                return self.send_json(200, {"kind": "PodList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": str(STATE["rv"])}, "items": []})
            if path.startswith("/api/v1/nodes/"):
                name = path.split("/")[4]
                with LOCK:
                    node = STATE["nodes"].get(name)
                    if node is None:
                        return self.send_json(404, status(404, "NotFound", 'nodes "%s" not found' % name))
                    return self.send_json(200, node)
            if path in ("/api/v1/events",) or (path.startswith("/api/v1/namespaces/") and path.endswith("/events")):
                ns = path.split("/")[4] if path.startswith("/api/v1/namespaces/") else None
                with LOCK:
                    every = STATE["events"] + [core_event(e) for e in STATE["events_v1"].values()]
                    items = [e for e in every if (ns is None or e["metadata"].get("namespace") == ns)
                             and field_match(e, q.get("fieldSelector"))]
                    return self.send_json(200, {"kind": "EventList", "apiVersion": "v1",
                                                "metadata": {"resourceVersion": str(STATE["rv"])}, "items": items})
            if path == "/apis/events.k8s.io/v1/events" or (path.startswith("/apis/events.k8s.io/v1/namespaces/") and path.endswith("/events")):
                with LOCK:
                    items = list(STATE["events_v1"].values())
                    return self.send_json(200, {"kind": "EventList", "apiVersion": "events.k8s.io/v1",
                                                "metadata": {"resourceVersion": str(STATE["rv"])}, "items": items})
        if method == "PATCH" and path.startswith("/api/v1/nodes/"):
            return self.patch_node(path.split("/")[4], path.endswith("/status"))
        parts = path.split("/")
        if path.startswith("/apis/events.k8s.io/v1/namespaces/") and len(parts) >= 7 and parts[6] == "events":
            return self.events_v1(method, parts[5], parts[7] if len(parts) > 7 else None)
        if path.startswith("/apis/coordination.k8s.io/v1/namespaces/") and len(parts) >= 7 and parts[6] == "leases":
            return self.leases(method, parts[5], parts[7] if len(parts) > 7 else None, q)
        if path.startswith("/apis/") and len(parts) >= 4:
            return self.custom(method, parts, q)
        if method == "POST" and path.startswith("/api/v1/namespaces/") and path.endswith("/events"):
            ev = json.loads(self.body() or b"{}")
            with LOCK:
                ev.setdefault("metadata", {})
                ev["metadata"].setdefault("name", "ev-%s" % uuid.uuid4().hex[:10])
                ev["metadata"]["namespace"] = path.split("/")[4]
                ev["metadata"]["resourceVersion"] = next_rv()
                ev["metadata"]["creationTimestamp"] = now()
                ev.setdefault("kind", "Event")
                ev.setdefault("apiVersion", "v1")
                STATE["events"].append(ev)
            return self.send_json(201, ev)
        return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

    def events_v1(self, method, ns, name):
        """events.k8s.io/v1: create, and merge-patch (how kube's Recorder counts a series)."""
        if method == "POST" and name is None:
            ev = json.loads(self.body() or b"{}")
            with LOCK:
                meta = ev.setdefault("metadata", {})
                meta.setdefault("name", "ev-%s" % uuid.uuid4().hex[:10])
                key = (ns, meta["name"])
                if key in STATE["events_v1"]:
                    return self.send_json(409, status(409, "AlreadyExists", 'events "%s" already exists' % meta["name"]))
                meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=next_rv(), creationTimestamp=now())
                ev.setdefault("kind", "Event")
                ev.setdefault("apiVersion", "events.k8s.io/v1")
                STATE["events_v1"][key] = ev
            return self.send_json(201, ev)
        if method == "PATCH" and name is not None:
            patch = json.loads(self.body() or b"null")
            with LOCK:
                cur = STATE["events_v1"].get((ns, name))
                if cur is None:
                    return self.send_json(404, status(404, "NotFound", 'events.events.k8s.io "%s" not found' % name))
                updated = merge_patch(cur, patch)
                updated["metadata"].update(name=name, namespace=ns, uid=cur["metadata"]["uid"], resourceVersion=next_rv())
                STATE["events_v1"][(ns, name)] = updated
            return self.send_json(200, updated)
        if method == "GET" and name is not None:
            with LOCK:
                cur = STATE["events_v1"].get((ns, name))
            if cur is None:
                return self.send_json(404, status(404, "NotFound", 'events.events.k8s.io "%s" not found' % name))
            return self.send_json(200, cur)
        return self.send_json(405, status(405, "MethodNotAllowed", "method not allowed"))

    def list_nodes(self, q):
        with LOCK:
            items = [copy.deepcopy(n) for n in STATE["nodes"].values()
                     if field_match(n, q.get("fieldSelector")) and label_match(n, q.get("labelSelector"))]
            meta = {"resourceVersion": str(STATE["rv"])}
        if "as=PartialObjectMetadataList" in (self.headers.get("Accept") or ""):
            return self.send_json(200, {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                        "metadata": meta,
                                        "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                   "metadata": n["metadata"]} for n in items]})
        return self.send_json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items})

    def leases(self, method, ns, name, q):
        """coordination.k8s.io/v1 Leases, with optimistic concurrency as a real API server has it;
        listed in name order (etcd's key order) with limit/continue; watched. kube-node-lease's
        heartbeats are kept out of the watch history: nothing here watches them."""
        def not_found():
            return self.send_json(404, status(404, "NotFound", 'leases.coordination.k8s.io "%s" not found' % name))

        def changed(type_, lease):
            if ns != "kube-node-lease":
                remember("leases", lease["metadata"]["resourceVersion"], type_, copy.deepcopy(lease))
        if name is None and method == "GET" and q.get("watch") in ("true", "1"):
            return self.serve_watch(q, "leases", lambda o: o["metadata"].get("namespace") == ns, lambda o: o,
                                    {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1"})
        if name is None and method == "GET":
            with LOCK:
                items = sorted((l for (n, _), l in STATE["leases"].items()
                                if n == ns and label_match(l, q.get("labelSelector"))),
                               key=lambda l: l["metadata"]["name"])
                after = q.get("continue")
                if after:
                    items = [l for l in items if l["metadata"]["name"] > after]
                limit = int(q.get("limit") or 0)
                meta = {"resourceVersion": str(STATE["rv"])}
                if limit and len(items) > limit:
                    items = items[:limit]
                    meta["continue"] = items[-1]["metadata"]["name"]
                items = [copy.deepcopy(l) for l in items]
            return self.send_json(200, {"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                                        "metadata": meta, "items": items})
        if name is None and method == "POST":
            lease = json.loads(self.body() or b"{}")
            with LOCK:
                meta = lease.setdefault("metadata", {})
                key = (ns, meta.get("name"))
                if key in STATE["leases"]:
                    return self.send_json(409, status(409, "AlreadyExists", 'leases.coordination.k8s.io "%s" already exists' % key[1]))
                meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=next_rv(), creationTimestamp=now())
                lease.update(kind="Lease", apiVersion="coordination.k8s.io/v1")
                STATE["leases"][key] = lease
                changed("ADDED", lease)
                out = copy.deepcopy(lease)
            return self.send_json(201, out)
        with LOCK:
            cur = STATE["leases"].get((ns, name))
            if cur is None:
                return not_found()
            if method == "GET":
                return self.send_json(200, copy.deepcopy(cur))
            if method == "DELETE":
                pre = (json.loads(self.body() or b"{}") or {}).get("preconditions") or {}
                if (pre.get("uid") and pre["uid"] != cur["metadata"]["uid"]) or \
                        (pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]):
                    return self.send_json(409, status(409, "Conflict", 'Operation cannot be fulfilled on leases.coordination.k8s.io "%s": the precondition failed' % name))
                del STATE["leases"][(ns, name)]
                gone = copy.deepcopy(cur)
                gone["metadata"]["resourceVersion"] = next_rv()
                changed("DELETED", gone)
                return self.send_json(200, status(200, "Success", "deleted"))
            if method == "PUT":
                lease = json.loads(self.body() or b"{}")
                want_rv = (lease.get("metadata") or {}).get("resourceVersion")
                if want_rv != cur["metadata"]["resourceVersion"]:
                    return self.send_json(409, status(409, "Conflict", 'Operation cannot be fulfilled on leases.coordination.k8s.io "%s": the object has been modified; please apply your changes to the latest version and try again' % name))
                lease["metadata"].update(name=name, namespace=ns, uid=cur["metadata"]["uid"], resourceVersion=next_rv(),
                                         creationTimestamp=cur["metadata"].get("creationTimestamp"))
                lease.update(kind="Lease", apiVersion="coordination.k8s.io/v1")
                STATE["leases"][(ns, name)] = lease
                changed("MODIFIED", lease)
                return self.send_json(200, copy.deepcopy(lease))
            if method == "PATCH" and "merge-patch" in (self.headers.get("Content-Type") or ""):
                lease = merge_patch(copy.deepcopy(cur), json.loads(self.body() or b"{}"))
                lease["metadata"].update(name=name, namespace=ns, uid=cur["metadata"]["uid"], resourceVersion=next_rv())
                STATE["leases"][(ns, name)] = lease
                changed("MODIFIED", lease)
                return self.send_json(200, copy.deepcopy(lease))
        return self.send_json(405, status(405, "MethodNotAllowed", "method not allowed"))

    # --- resources served from definitions (custom_resources.py) ---------------------------------

    def custom(self, method, parts, q):
        group, version, rest = parts[2], parts[3], parts[4:]
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        with LOCK:
            defs = cr.definitions(STATE["objects"])
        if not rest:
            listing = cr.resource_list(defs, group, version) if method == "GET" else None
            if listing is None:
                return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return self.send_json(200, listing)
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        d = defs.get((group, version, plural))
        if d is None or (namespace is not None) != d["namespaced"] or (sub not in (None, "status")) \
                or (sub == "status" and not d["status"]):
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        ns = namespace or ""
        try:
            if name is None:
                if method == "GET":
                    if q.get("watch") in ("true", "1"):
                        return self.watch_custom(d, version, namespace, q)
                    return self.list_custom(d, version, namespace, q)
                if method == "POST":
                    return self.create_custom(d, version, ns, q)
            else:
                if method == "GET":
                    with LOCK:
                        cur = STATE["objects"].get((group, plural), {}).get((ns, name))
                    if cur is None:
                        return self.not_found(d, name)
                    return self.send_json(200, self.as_version(cur, d, version))
                if method in ("PUT", "PATCH"):
                    return self.change_custom(method, d, version, ns, name, sub, q)
                if method == "DELETE":
                    return self.delete_custom(d, version, ns, name)
        except cr.Invalid as e:
            return self.send_json(422, status(422, "Invalid", str(e)))
        except cr.BadRequest as e:
            return self.send_json(400, status(400, "BadRequest", str(e)))
        return self.send_json(405, status(405, "MethodNotAllowed", "method not allowed"))

    def not_found(self, d, name):
        return self.send_json(404, status(404, "NotFound", '%s.%s "%s" not found' % (d["plural"], d["group"], name)))

    @staticmethod
    def as_version(obj, d, version):
        out = copy.deepcopy(obj)
        out["apiVersion"] = "%s/%s" % (d["group"], version) if d["group"] else version
        out["kind"] = d["kind"]
        return out

    def list_custom(self, d, version, namespace, q):
        with LOCK:
            objs = STATE["objects"].get((d["group"], d["plural"]), {})
            items = [self.as_version(o, d, version) for (ns, _), o in sorted(objs.items())
                     if (namespace is None or ns == namespace)
                     and field_match(o, q.get("fieldSelector")) and label_match(o, q.get("labelSelector"))]
            rv = str(STATE["rv"])
        accept = self.headers.get("Accept") or ""
        if "as=Table" in accept:
            return self.send_json(200, cr.table(d, items, rv))
        if "as=PartialObjectMetadataList" in accept:
            return self.send_json(200, {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                        "metadata": {"resourceVersion": rv},
                                        "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                   "metadata": o["metadata"]} for o in items]})
        return self.send_json(200, {"kind": d["list_kind"], "apiVersion": "%s/%s" % (d["group"], version),
                                    "metadata": {"resourceVersion": rv}, "items": items})

    def record_object(self, d, kind, obj):
        rv = next_rv()
        obj["metadata"]["resourceVersion"] = rv
        kept = copy.deepcopy(obj)
        STATE["object_history"].append((int(rv), d["group"], d["plural"], kind, kept))
        remember((d["group"], d["plural"]), rv, kind, kept)
        LOCK.notify_all()

    def create_custom(self, d, version, ns, q):
        obj = json.loads(self.body() or b"{}")
        strict = q.get("fieldValidation") == "Strict"
        with LOCK:
            store = STATE["objects"].setdefault((d["group"], d["plural"]), {})
            meta = cr.new_meta(obj, ns if d["namespaced"] else None)
            name = meta.get("name")
            if not name:
                raise cr.Invalid('%s.%s "" is invalid: metadata.name: Required value: name or generateName is required' % (d["plural"], d["group"]))
            if (ns, name) in store:
                return self.send_json(409, status(409, "AlreadyExists", '%s.%s "%s" already exists' % (d["plural"], d["group"], name)))
            stored, warnings = cr.admit(d, obj, strict)
            if d["status"] and d["kind"] != "CustomResourceDefinition":
                stored.pop("status", None)
            if d["kind"] == "CustomResourceDefinition":
                cr.established(stored)
            stored = self.as_version(stored, d, version)
            store[(ns, name)] = stored
            self.record_object(d, "ADDED", stored)
            out = copy.deepcopy(stored)
            self.collect_orphan(d, store, (ns, name))
        return self.send_json_warned(201, out, warnings)

    def send_json_warned(self, code, body, warnings):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for w in warnings:
            self.send_header("Warning", '299 - "%s"' % w.replace('"', "'"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def change_custom(self, method, d, version, ns, name, sub, q):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        strict = q.get("fieldValidation") == "Strict"
        with LOCK:
            store = STATE["objects"].setdefault((d["group"], d["plural"]), {})
            cur = store.get((ns, name))
            if cur is None:
                return self.not_found(d, name)
            body = json.loads(self.body() or b"null")
            if method == "PUT":
                want = body
            elif ctype == "application/json-patch+json":
                try:
                    want = json_patch(cur, body)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise cr.Invalid(str(e))
            elif ctype == "application/merge-patch+json" or (
                    ctype == "application/strategic-merge-patch+json" and d["schema"] is None):
                want = merge_patch(cur, body)
            elif ctype == "application/strategic-merge-patch+json":
                return self.send_json(415, status(415, "UnsupportedMediaType",
                                                  "the body of the request was in an unknown format - accepted media types include: "
                                                  "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"))
            else:
                return self.send_json(415, status(415, "UnsupportedMediaType", "unsupported patch type " + ctype))
            want_rv = (((body or {}).get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None)
            if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
                return self.send_json(409, status(409, "Conflict",
                                                  'Operation cannot be fulfilled on %s.%s "%s": the object has been modified; '
                                                  "please apply your changes to the latest version and try again" % (d["plural"], d["group"], name)))
            want = copy.deepcopy(want)
            meta = want.setdefault("metadata", {})
            # What only the server sets stays as it was.
            for k in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace", "name"):
                if k in cur["metadata"]:
                    meta[k] = cur["metadata"][k]
                else:
                    meta.pop(k, None)
            stored, warnings = cr.admit(d, want, strict)
            if sub == "status":
                updated = copy.deepcopy(cur)
                updated["status"] = stored.get("status")
                if updated["status"] is None:
                    del updated["status"]
            else:
                updated = stored
                if d["status"]:
                    if "status" in cur:
                        updated["status"] = copy.deepcopy(cur["status"])
                    else:
                        updated.pop("status", None)
                if cr.spec_of(updated) != cr.spec_of(cur):
                    updated["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
            if d["kind"] == "CustomResourceDefinition" and sub is None:
                cr.established(updated)
            updated = self.as_version(updated, d, version)
            if updated != cur:
                store[(ns, name)] = updated
                self.record_object(d, "MODIFIED", updated)
            out = copy.deepcopy(store[(ns, name)])
            self.collect_orphan(d, store, (ns, name))
        return self.send_json_warned(200, out, warnings)

    def delete_custom(self, d, version, ns, name):
        with LOCK:
            store = STATE["objects"].setdefault((d["group"], d["plural"]), {})
            cur = store.pop((ns, name), None)
            if cur is None:
                return self.not_found(d, name)
            self.record_object(d, "DELETED", cur)
            self.collect_garbage(cur)
            out = copy.deepcopy(cur)
        return self.send_json(200, out)

    def collect_garbage(self, deleted):
        """What the API server's garbage collector and CRD finalizer do (at once here): dependents
        of a deleted owner go, and so do a deleted CRD's objects."""
        defs = cr.definitions(STATE["objects"])
        by_plural = {(g, p): d for (g, _, p), d in defs.items()}
        if deleted.get("kind") == "CustomResourceDefinition":
            spec = deleted["spec"]
            gone = STATE["objects"].pop((spec["group"], spec["names"]["plural"]), {})
            d = {"group": spec["group"], "plural": spec["names"]["plural"]}
            for o in gone.values():
                self.record_object(d, "DELETED", o)
                self.collect_garbage(o)
        for g, plural, key in cr.dependents(STATE["objects"], deleted["metadata"]["uid"]):
            o = STATE["objects"][(g, plural)].pop(key)
            self.record_object(by_plural.get((g, plural), {"group": g, "plural": plural}), "DELETED", o)
            self.collect_garbage(o)

    def collect_orphan(self, d, store, key):
        """The garbage collector also deletes an object whose owners are all gone when it is
        written (a controller that had not yet seen its owner's deletion): at once here, after the
        write was answered as the real server answers it."""
        refs = store[key]["metadata"].get("ownerReferences") or []
        if not refs:
            return
        live = {o["metadata"].get("uid") for objs in STATE["objects"].values() for o in objs.values()}
        live |= {n["metadata"].get("uid") for n in STATE["nodes"].values()}
        if not any(r.get("uid") in live for r in refs):
            o = store.pop(key)
            self.record_object(d, "DELETED", o)
            self.collect_garbage(o)

    def watch_custom(self, d, version, namespace, q):
        def keep(o):
            return namespace is None or o["metadata"].get("namespace") == namespace

        api_version = "%s/%s" % (d["group"], version)
        return self.serve_watch(q, (d["group"], d["plural"]), keep, lambda o: self.as_version(o, d, version),
                                {"kind": d["kind"], "apiVersion": api_version}, render_key=version)

    def watch_nodes(self, q):
        since = int(q.get("resourceVersion") or 0)
        with LOCK:
            if since and STATE["history"] and since < STATE["history"][0][0] - 1:
                return self.send_json(410, status(410, "Expired", "too old resource version"))
        return self.serve_watch(q, "nodes", lambda o: True, self.metadata_if_asked,
                                {"kind": "Node", "apiVersion": "v1"})

    def metadata_if_asked(self, o):
        if "as=PartialObjectMetadata" in (self.headers.get("Accept") or ""):
            return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        return o

    def serve_watch(self, q, kind, keep, render, bookmark, render_key=""):
        """One watch, as the API server streams it: every event of `kind` after the asked
        resourceVersion that `keep` and the selectors let through, `render`ed; a bookmark every ten
        seconds while idle when asked (a real server: about every minute); ended at the timeout or
        when the test drops every watch."""
        since = int(q.get("resourceVersion") or 0)
        selector, labels = q.get("fieldSelector"), q.get("labelSelector")
        only = selector[len("metadata.name="):] if selector and selector.startswith("metadata.name=") \
            and "," not in selector else None
        bookmarks = q.get("allowWatchBookmarks") == "true"
        # A real API server ends a watch after its --min-request-timeout (30 to 60 minutes by default).
        deadline = time.time() + min(int(q.get("timeoutSeconds") or 1800), STATE["watch_cap"])
        woken = threading.Event()
        self._watch_kind = kind if isinstance(kind, str) else kind[1]
        with LOCK:
            generation = STATE["watch_generation"]
            WATCHERS.setdefault((kind, only), set()).add(woken)
            STATE["open_watches"] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent, idle_since = since, time.time()
        try:
            while time.time() < deadline:
                woken.clear()
                with LOCK:
                    pending = history_after(kind, sent)
                    dropped = STATE["watch_generation"] != generation
                    current = STATE["rv"]
                if dropped:
                    break
                for rv, t, o in pending:
                    sent = rv
                    if keep(o) and field_match(o, selector) and label_match(o, labels):
                        self.chunk_bytes(self.event_bytes((kind, render_key), rv, t, o, render))
                        idle_since = time.time()
                if pending:
                    continue
                if bookmarks and time.time() - idle_since >= 10:
                    self.chunk({"type": "BOOKMARK", "object": dict(bookmark, metadata={"resourceVersion": str(max(sent, current))})})
                    idle_since = time.time()
                woken.wait(timeout=max(0.05, min(10, deadline - time.time())))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                STATE["open_watches"] -= 1
                WATCHERS[(kind, only)].discard(woken)
        self.close_connection = True

    def event_bytes(self, kind, rv, type_, obj, render):
        """A watch event serialized once for every watcher that renders it the same way (as the API
        server's watch cache does): fanning an event out to many watches costs a copy, not an encode."""
        variant = "meta" if "as=PartialObjectMetadata" in (self.headers.get("Accept") or "") else "full"
        key = (kind, rv, variant)
        data = EVENT_CACHE.get(key)
        if data is None:
            data = (json.dumps({"type": type_, "object": render(obj)}) + "\n").encode()
            with LOCK:
                if len(EVENT_CACHE) > 20000:
                    EVENT_CACHE.clear()
                EVENT_CACHE[key] = data
        return data

    def chunk(self, obj):
        self.chunk_bytes((json.dumps(obj) + "\n").encode())

    def chunk_bytes(self, data):
        key = "%s|%s" % (self.headers.get("User-Agent", ""), getattr(self, "_watch_kind", ""))
        with LOCK:
            STATE["watch_bytes"][key] = STATE["watch_bytes"].get(key, 0) + len(data)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def patch_node(self, name, status_sub):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        raw = self.body()
        with LOCK:
            node = STATE["nodes"].get(name)
            if node is None:
                return self.send_json(404, status(404, "NotFound", 'nodes "%s" not found' % name))
            try:
                patch = json.loads(raw or b"null")
                # An injected conflict hits a patch with a resourceVersion precondition, the only kind
                # a real API server can answer 409.
                if STATE["conflicts"] > 0 and isinstance(patch, dict) and (patch.get("metadata") or {}).get("resourceVersion"):
                    STATE["conflicts"] -= 1
                    return self.send_json(409, status(409, "Conflict", "Operation cannot be fulfilled on nodes \"%s\": the object has been modified (injected)" % name))
                if ctype == "application/json-patch+json":
                    updated = json_patch(node, patch)
                elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    want_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
                    if want_rv and want_rv != node["metadata"]["resourceVersion"]:
                        return self.send_json(409, status(409, "Conflict", "Operation cannot be fulfilled on nodes \"%s\": the object has been modified; please apply your changes to the latest version and try again" % name))
                    updated = merge_patch(node, patch)
                else:
                    return self.send_json(415, status(415, "UnsupportedMediaType", "unsupported patch type " + ctype))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                return self.send_json(422, status(422, "Invalid", str(e)))
            updated["metadata"]["name"] = name
            updated["metadata"]["uid"] = node["metadata"]["uid"]
            if updated != node:
                STATE["nodes"][name] = updated
                record("MODIFIED", updated)
            return self.send_json(200, updated)

    def control(self, method, path, q):
        with LOCK:
            if path == "/_test/nodes" and method == "POST":
                spec = json.loads(self.body() or b"{}")
                node = new_node(spec["name"], spec.get("arch", "amd64"), spec.get("labels"), spec.get("annotations"))
                if spec.get("taints"):
                    node["spec"]["taints"] = spec["taints"]
                STATE["nodes"][node["metadata"]["name"]] = node
                record("ADDED", node)
                return self.send_json(201, node)
            if path == "/_test/simulate" and method == "POST":
                # Nodes without an agent, and their kubelets (simulate_kubelets).
                spec = json.loads(self.body() or b"{}")
                names = ["%s%05d" % (spec.get("prefix", "sim-"), i) for i in range(int(spec["nodes"]))]
                for name in names:
                    node = new_node(name, spec.get("arch", "amd64"), spec.get("labels"), spec.get("annotations"))
                    STATE["nodes"][name] = node
                    record("ADDED", node)
                    STATE["leases"][("kube-node-lease", name)] = {
                        "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {"name": name, "namespace": "kube-node-lease", "uid": str(uuid.uuid4()),
                                     "resourceVersion": next_rv(), "creationTimestamp": now(),
                                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                                          "uid": node["metadata"]["uid"]}]},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}}
                thread = threading.Thread(target=simulate_kubelets, daemon=True,
                                          args=(names, float(spec.get("status_every", 300)), float(spec.get("lease_every", 10))))
                thread.start()
                STATE["simulated"] = thread
                return self.send_json(201, {"nodes": len(names)})
            if path == "/_test/load":
                return self.send_json(200, {"watch_bytes": STATE["watch_bytes"], "open_watches": STATE["open_watches"],
                                            "simulated_writes": STATE["simulated_writes"], "rv": STATE["rv"],
                                            "requests": len(STATE["requests"])})
            if path == "/_test/drop-watches":
                STATE["watch_generation"] += 1
                for evs in WATCHERS.values():
                    for ev in evs:
                        ev.set()
                LOCK.notify_all()
                return self.send_json(200, {})
            if path == "/_test/conflicts":
                STATE["conflicts"] = int(q.get("n", "1"))
                return self.send_json(200, {})
            if path == "/_test/outage":
                STATE["fail_requests"] = int(q.get("n", "1"))
                return self.send_json(200, {})
            if path == "/_test/requests":
                return self.send_json(200, STATE["requests"])
            if path == "/_test/clear-requests":
                STATE["requests"] = []
                return self.send_json(200, {})
            if path == "/_test/watch-cap":
                STATE["watch_cap"] = int(q.get("seconds", "3600"))
                return self.send_json(200, {})
            if path == "/_test/history":
                # Every version a custom resource went through, as its watchers saw them.
                return self.send_json(200, [{"type": t, "object": o} for (_, g, p, t, o) in STATE["object_history"]
                                            if g == q.get("group") and p == q.get("plural")])
            if path == "/_test/watches":
                return self.send_json(200, {"open": STATE["open_watches"]})
        return self.send_json(404, {})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PATCH(self):
        self.route("PATCH")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")


class Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: hundreds of agents connecting at once (a fleet benchmark)
    # overflowed it and connections were reset. A real API server listens with the system's maximum.
    request_queue_size = 4096


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = Server(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
