"""Resources served from definitions, as the real API server serves them: CustomResourceDefinitions
(apiextensions.k8s.io/v1) and the custom resources they define, plus built-in kinds with nothing
special about them (node.k8s.io/v1 RuntimeClasses). fake_kube_api.py routes /apis/<group>/... here.

What matters to clients is what the real server does: a CRD's resource appears in discovery once
created; objects are validated against the version's structural openAPIV3Schema (unknown fields
pruned, or refused under fieldValidation=Strict as kubectl asks); with the status subresource the
main endpoint ignores status and /status changes only status; metadata.generation moves with spec;
resourceVersion preconditions answer 409; strategic merge patches are refused for custom resources
(415); deleting an owner deletes its dependents (the garbage collector, done at once); list and
watch take label and field selectors; tables carry the CRD's additionalPrinterColumns.
"""
import copy
import datetime
import re
import uuid

CRD_GROUP = "apiextensions.k8s.io"

# Built-in kinds stored like custom resources: (group, version, plural) -> definition.
BUILTIN = {
    ("node.k8s.io", "v1", "runtimeclasses"): {
        "kind": "RuntimeClass", "singular": "runtimeclass", "namespaced": False, "status": False,
        "schema": None, "columns": [{"name": "Handler", "type": "string", "jsonPath": ".handler"},
                                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
    },
    (CRD_GROUP, "v1", "customresourcedefinitions"): {
        "kind": "CustomResourceDefinition", "singular": "customresourcedefinition", "namespaced": False,
        "status": True, "schema": None, "short": ["crd", "crds"],
        "columns": [{"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
    },
}


class Invalid(Exception):
    """422: the object does not match its schema."""


class BadRequest(Exception):
    """400: e.g. unknown fields under strict field validation."""


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def definitions(objects):
    """Every served (group, version, plural) -> definition: the built-ins and each CRD's versions."""
    out = {key: dict(d, group=key[0], plural=key[2], list_kind=d["kind"] + "List") for key, d in BUILTIN.items()}
    for crd in objects.get((CRD_GROUP, "customresourcedefinitions"), {}).values():
        spec = crd["spec"]
        names = spec["names"]
        for v in spec["versions"]:
            if not v.get("served", True):
                continue
            out[(spec["group"], v["name"], names["plural"])] = {
                "kind": names["kind"], "singular": names.get("singular", names["kind"].lower()),
                "namespaced": spec.get("scope") == "Namespaced",
                "status": "status" in (v.get("subresources") or {}),
                "schema": (v.get("schema") or {}).get("openAPIV3Schema"),
                "columns": v.get("additionalPrinterColumns") or [],
                "short": names.get("shortNames") or [],
                "categories": names.get("categories") or [],
                "list_kind": names.get("listKind", names["kind"] + "List"),
                "group": spec["group"], "plural": names["plural"],
            }
    return out


def discovery_groups(defs):
    groups = {}
    for (g, v, _) in defs:
        groups.setdefault(g, [])
        if v not in groups[g]:
            groups[g].append(v)
    return [{"name": g, "versions": [{"groupVersion": "%s/%s" % (g, v), "version": v} for v in vs],
             "preferredVersion": {"groupVersion": "%s/%s" % (g, vs[0]), "version": vs[0]}}
            for g, vs in sorted(groups.items())]


def resource_list(defs, group, version):
    resources = []
    for (g, v, plural), d in sorted(defs.items()):
        if (g, v) != (group, version):
            continue
        entry = {"name": plural, "singularName": d["singular"], "namespaced": d["namespaced"],
                 "kind": d["kind"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
        if d.get("short"):
            entry["shortNames"] = d["short"]
        if d.get("categories"):
            entry["categories"] = d["categories"]
        resources.append(entry)
        if d["status"]:
            resources.append({"name": plural + "/status", "singularName": "", "namespaced": d["namespaced"],
                              "kind": d["kind"], "verbs": ["get", "patch", "update"]})
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "%s/%s" % (group, version),
            "resources": resources}


# --- validation against a structural schema -------------------------------------------------------

def validate(schema, value, path, unknown, errors):
    """The value as stored: unknown fields pruned (their paths appended to `unknown`), defaults as
    given; schema violations appended to `errors` as the API server words them."""
    if schema is None:
        return value
    if value is None:
        if schema.get("nullable"):
            return None
        errors.append("%s: Invalid value: \"null\": %s in body must be of type %s" % (path, path, schema.get("type", "object")))
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append("%s: Invalid value: must be an integer or a string" % path)
        return value
    t = schema.get("type")
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool}
    if t in kinds and not isinstance(value, kinds[t]):
        errors.append('%s: Invalid value: "%s": %s in body must be of type %s: "%s"'
                      % (path, json_type(value), path, t, json_type(value)))
        return value
    if t == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        errors.append("%s: Invalid value: %s in body must be of type integer" % (path, path))
        return value
    if t == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        errors.append("%s: Invalid value: %s in body must be of type number" % (path, path))
        return value
    if "enum" in schema and value not in schema["enum"]:
        errors.append('%s: Unsupported value: %s: supported values: %s'
                      % (path, quote(value), ", ".join(quote(e) for e in schema["enum"])))
    if t == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append('%s: Invalid value: "%s": %s in body should match \'%s\'' % (path, value, path, schema["pattern"]))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append('%s: Invalid value: "%s": %s in body should be at least %d chars long' % (path, value, path, schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append('%s: Too long: may not be more than %d bytes' % (path, schema["maxLength"]))
    if t in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append("%s: Invalid value: %s: %s in body should be greater than or equal to %s" % (path, value, path, schema["minimum"]))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append("%s: Invalid value: %s: %s in body should be less than or equal to %s" % (path, value, path, schema["maximum"]))
    if t == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append("%s: Invalid value: %d: %s in body should have at least %d items" % (path, len(value), path, schema["minItems"]))
        items = schema.get("items")
        return [validate(items, v, "%s[%d]" % (path, i), unknown, errors) for i, v in enumerate(value)]
    if t == "object" or "properties" in schema:
        out = {}
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields")
        for k, v in value.items():
            sub = "%s.%s" % (path, k) if path else k
            if props is not None and k in props:
                out[k] = validate(props[k], v, sub, unknown, errors)
            elif isinstance(extra, dict):
                out[k] = validate(extra, v, sub, unknown, errors)
            elif keep or extra is True:
                out[k] = v
            else:
                unknown.append(sub)
        for r in schema.get("required") or []:
            if r not in value:
                errors.append("%s: Required value" % ("%s.%s" % (path, r) if path else r))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append("%s: Invalid value: %s in body should have at least %d properties" % (path, path, schema["minProperties"]))
        return out
    return value


def json_type(v):
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(v), "null")


def quote(v):
    return '"%s"' % v if isinstance(v, str) else str(v)


def admit(d, obj, strict):
    """Validate and prune `obj` (a whole object) against definition `d`; returns (stored, warnings)."""
    schema = d.get("schema")
    if schema is None:
        return obj, []
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    top = copy.deepcopy(schema)
    top.setdefault("type", "object")
    props = dict(top.get("properties") or {})
    for k in ("apiVersion", "kind", "metadata"):
        props.pop(k, None)
    top["properties"] = props
    top["required"] = [r for r in top.get("required") or [] if r not in ("apiVersion", "kind", "metadata")]
    unknown, errors = [], []
    pruned = validate(top, body, "", unknown, errors)
    name = (obj.get("metadata") or {}).get("name", "")
    if unknown and strict:
        raise BadRequest('%s in version "%s" cannot be handled as a %s: strict decoding error: %s'
                         % (d["kind"], obj.get("apiVersion", "").split("/")[-1], d["kind"],
                            ", ".join('unknown field "%s"' % u for u in unknown)))
    if errors:
        # One error stands alone; several are bracketed, as the API server words them.
        listed = errors[0] if len(errors) == 1 else "[%s]" % ", ".join(errors)
        raise Invalid('%s.%s "%s" is invalid: %s' % (d["plural"], d["group"], name, listed))
    stored = dict(pruned)
    for k in ("apiVersion", "kind", "metadata"):
        if k in obj:
            stored[k] = obj[k]
    return stored, ['unknown field "%s"' % u for u in unknown]


# --- tables (kubectl get) -------------------------------------------------------------------------

def jsonpath(obj, path):
    cur = obj
    for part in [p for p in path.strip().lstrip(".").split(".") if p]:
        m = re.match(r"^([^\[]+)\[(\d+)\]$", part)
        key, idx = (m.group(1), int(m.group(2))) if m else (part, None)
        cur = cur.get(key) if isinstance(cur, dict) else None
        if idx is not None:
            cur = cur[idx] if isinstance(cur, list) and len(cur) > idx else None
        if cur is None:
            return None
    return cur


def age(ts):
    try:
        then = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return "<unknown>"
    s = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    if s < 120:
        return "%ds" % max(s, 0)
    if s < 7200:
        return "%dm" % (s // 60)
    if s < 172800:
        return "%dh" % (s // 3600)
    return "%dd" % (s // 86400)


def table(d, items, rv):
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    for c in d["columns"]:
        columns.append({"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                        "description": c.get("description", ""), "priority": c.get("priority", 0)})
    if not d["columns"]:
        columns.append({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0})
    rows = []
    for o in items:
        cells = [o["metadata"]["name"]]
        for c in d["columns"] or [{"type": "date", "jsonPath": ".metadata.creationTimestamp"}]:
            v = jsonpath(o, c["jsonPath"])
            cells.append(age(v) if c["type"] == "date" and v is not None else v)
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                 "metadata": o["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": columns, "rows": rows}


# --- the store ------------------------------------------------------------------------------------

def new_meta(obj, namespace):
    meta = obj.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
    if namespace:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    meta.pop("resourceVersion", None)
    return meta


def established(crd):
    """A CRD as the API server shows it once its names are accepted."""
    names = crd["spec"]["names"]
    crd["status"] = {
        "acceptedNames": names,
        "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now()},
        ],
    }
    return crd


def dependents(objects, uid):
    """(group, plural, key) of every object that names `uid` among its owners."""
    out = []
    for (g, plural), objs in objects.items():
        for key, o in objs.items():
            if any(r.get("uid") == uid for r in (o["metadata"].get("ownerReferences") or [])):
                out.append((g, plural, key))
    return out


def spec_of(obj):
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --- OpenAPI v3 (what kubectl reads to know the server takes fieldValidation) ---------------------

CORE = {"Node": "nodes", "Namespace": "namespaces", "Event": "events", "Pod": "pods"}


# Built-in group-versions beyond the core one that tests write with kubectl (which validates
# against the server's OpenAPI before it sends).
BUILTIN_GVS = {
    "apis/coordination.k8s.io/v1": [("coordination.k8s.io", "v1", "leases", {"kind": "Lease", "namespaced": True})],
}


def openapi_root(defs):
    gvs = {"api/v1"} | set(BUILTIN_GVS) | {"apis/%s/%s" % (g, v) for (g, v, _) in defs}
    return {"paths": {gv: {"serverRelativeURL": "/openapi/v3/%s?hash=0" % gv} for gv in sorted(gvs)}}


def openapi_gv(defs, gv):
    """The paths of one group-version: each resource's PATCH with its kind and fieldValidation."""
    if gv == "api/v1":
        kinds = [("", "v1", plural, {"kind": kind, "namespaced": kind in ("Event", "Pod")}) for kind, plural in CORE.items()]
    elif gv in BUILTIN_GVS:
        kinds = BUILTIN_GVS[gv]
    else:
        kinds = [(g, v, p, d) for (g, v, p), d in defs.items() if "apis/%s/%s" % (g, v) == gv]
    if not kinds:
        return None
    paths = {}
    for g, v, plural, d in kinds:
        base = "/api/v1" if g == "" else "/apis/%s/%s" % (g, v)
        where = base + ("/namespaces/{namespace}/" if d["namespaced"] else "/") + plural + "/{name}"
        op = {"x-kubernetes-group-version-kind": {"group": g, "version": v, "kind": d["kind"]},
              "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                             {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}],
              "responses": {"200": {"description": "OK"}}}
        paths[where] = {"patch": op, "put": dict(op), "get": dict(op)}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": {}}}
