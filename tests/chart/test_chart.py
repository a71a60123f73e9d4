"""The Helm chart, checked with Helm's own engine and Kubernetes' own schemas.

- Every values file in values/ (and the defaults) lints cleanly and renders with Helm v4's engine
  (client-only dry-run install, as `helm template`); every object, hooks included, validates strictly
  against the OpenAPI schemas of Kubernetes 1.30 through 1.37; every object carries the standard labels;
  the rendered settings file is accepted by `kwasm-agent check`.
- Every file in invalid/ is refused at render time by values.schema.json, naming the offending key.
- (The admission policies, RBAC and the Shim CRD are judged by a real API server, with each identity's
  token: tests/tests/admission.rs.)
- manifests/deploy/ holds exactly what the chart renders from its defaults.

Run by scripts/test.sh in its venv: python -m unittest discover -s tests/chart
Environment: KWASM_AGENT = the kwasm-agent binary to run `check` with.
"""

import copy
import json
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "manifests" / "helm" / "kwasm-agent"
HERE = Path(__file__).resolve().parent
KUBE_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]
NAMESPACE = "kube-system"
RELEASE = "kwasm-agent"


def load_values(path):
    return yaml.safe_load(Path(path).read_text()) or {}


def render(values, with_hooks=True):
    """Every object the chart renders for `values`, as a list of dicts.

    The dry-run install runs Helm's full install path (schema validation included); its manifest
    leaves hooks out, so hooks (the uninstall hook, `helm test`'s pods) come from rendering the
    templates themselves.
    """
    chart = helm.Chart.load(str(CHART))
    config = helm.Config(storage_driver="memory", namespace=NAMESPACE)
    release = config.install(chart, RELEASE, values, dry_run="client", namespace=NAMESPACE)
    docs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    if with_hooks:
        for name, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items():
            if name.endswith(("uninstall-hook.yaml", "shim-tests.yaml")):
                docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


CRD = yaml.safe_load((CHART / "crds" / "shims.kwasm.sh.yaml").read_text())


def validate_against_crd(doc):
    """A Shim as the API server checks it with fieldValidation=Strict: the CRD's structural schema
    (types, required, enums, patterns) and no field the schema does not name."""
    import jsonschema
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.validate(body, {k: v for k, v in schema.items() if k != "x-kubernetes-preserve-unknown-fields"})

    def unknown(value, node, at):
        if not isinstance(value, dict) or node.get("x-kubernetes-preserve-unknown-fields"):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    unknown(item, node.get("items", {}), f"{at}[{i}]")
            return
        props = node.get("properties")
        for key, inner in value.items():
            if props is None:
                unknown(inner, node.get("additionalProperties") or {}, f"{at}.{key}")
            elif key not in props:
                raise AssertionError(f"unknown field {at}.{key}")
            else:
                unknown(inner, props[key], f"{at}.{key}")
    unknown(body, schema, "")


class ChartRenders(unittest.TestCase):
    def cases(self):
        yield "defaults", {}
        for f in sorted((HERE / "values").glob("*.yaml")):
            yield f.name, load_values(f)

    def test_lints_cleanly_for_every_kubernetes_version(self):
        for name, values in self.cases():
            for v in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
                with self.subTest(values=name, kube=v):
                    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{v}.0")
                    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                    self.assertEqual(problems, [], report)

    def test_every_object_validates_strictly_on_1_30_through_1_37(self):
        for name, values in self.cases():
            docs = render(values)
            self.assertTrue(docs)
            for doc in docs:
                if doc["apiVersion"] == "kwasm.sh/v1alpha1":
                    with self.subTest(values=name, object=f"{doc['kind']}/{doc['metadata']['name']}"):
                        validate_against_crd(doc)
                    continue
                for v in KUBE_VERSIONS:
                    with self.subTest(values=name, kube=v, object=f"{doc['kind']}/{doc['metadata']['name']}"):
                        kubernetes_validate.validate(doc, v, strict=True)

    def test_every_object_carries_the_standard_labels(self):
        for name, values in self.cases():
            for doc in render(values):
                labels = doc["metadata"].get("labels") or {}
                for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                            "app.kubernetes.io/managed-by", "helm.sh/chart"):
                    with self.subTest(values=name, object=f"{doc['kind']}/{doc['metadata']['name']}", label=key):
                        self.assertIn(key, labels)

    def test_the_rendered_settings_are_accepted_by_the_agent(self):
        agent = os.environ.get("KWASM_AGENT", str(ROOT / "target" / "debug" / "kwasm-agent"))
        for name, values in self.cases():
            with self.subTest(values=name):
                (cm,) = by_kind(render(values, with_hooks=False), "ConfigMap")
                with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                    f.write(cm["data"]["config.toml"])
                    f.flush()
                    out = subprocess.run([agent, "check", "--config", f.name], capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stderr + cm["data"]["config.toml"])

    def test_each_runtime_class_selects_its_own_shims_readiness_label(self):
        values = load_values(HERE / "values" / "several-shims.yaml")
        classes = {rc["handler"]: rc for rc in by_kind(render(values), "RuntimeClass")}
        self.assertEqual(sorted(classes), ["spin", "wasmedge-arm", "wasmtime"])
        for handler, rc in classes.items():
            self.assertEqual(rc["scheduling"]["nodeSelector"], {f"kwasm.sh/shim.{handler}": "true"})
        self.assertEqual(classes["spin"]["metadata"]["name"], "wasmtime-spin-v2")

    def test_argv_restart_and_option_tables_render_as_toml_the_agent_reads(self):
        docs = render(load_values(HERE / "values" / "argv-restart.yaml"))
        text = by_kind(docs, "ConfigMap")[0]["data"]["config.toml"]
        self.assertIn('restart = ["/usr/local/sbin/restart-containerd", "--graceful", "--timeout=30"]', text)
        self.assertIn('listen = "0.0.0.0:19101"', text)
        docs = render(load_values(HERE / "values" / "several-shims.yaml"))
        text = by_kind(docs, "ConfigMap")[0]["data"]["config.toml"]
        self.assertIn('options = {"Nested" = {"level" = 2, "names" = ["a", "b"], "ratio" = 0.5}, "SystemdCgroup" = false}', text)

    def test_the_image_defaults_to_the_app_version_or_a_digest(self):
        (ds,) = by_kind(render({}), "DaemonSet")
        image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(image, f"ghcr.io/kwasm/kwasm-agent:{chart['appVersion']}")
        (ds,) = by_kind(render(load_values(HERE / "values" / "private-registry.yaml")), "DaemonSet")
        self.assertTrue(ds["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "0123456789abcdef" * 4))


def arch_pins(value, at=""):
    """Every place under `value` that names kubernetes.io/arch (a nodeSelector key or an affinity
    match expression), as paths."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "kubernetes.io/arch" or (k == "key" and v == "kubernetes.io/arch"):
                found.append(f"{at}.{k}")
            found += arch_pins(v, f"{at}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += arch_pins(v, f"{at}[{i}]")
    return found


class MultiArch(unittest.TestCase):
    def test_one_image_reference_and_no_architecture_pinned_unless_a_user_asks(self):
        """The image is one index for amd64 and arm64: every pod takes the same reference, and nothing
        the chart renders keeps a pod off an architecture — only a user's own nodeSelector/affinity."""
        for name, values in ChartRenders().cases():
            docs = render(values)
            images = {c["image"] for d in docs if d["kind"] in ("DaemonSet", "Deployment", "Job")
                      for c in d["spec"]["template"]["spec"].get("containers", [])}
            with self.subTest(values=name):
                self.assertEqual(len(images), 1, images)
                self.assertNotRegex(next(iter(images)), "amd64|x86_64|arm64|aarch64")
                user = arch_pins(values)
                pins = [p for d in docs if d["kind"] in ("DaemonSet", "Deployment", "Job")
                        for p in arch_pins(d["spec"]["template"]["spec"])]
                self.assertEqual(bool(pins), bool(user), f"rendered {pins}, values {user}")

    def test_a_users_architecture_selector_is_rendered_as_given(self):
        values = {"nodeSelector": {"kubernetes.io/arch": "arm64"}}
        (ds,) = by_kind(render(values), "DaemonSet")
        self.assertEqual(ds["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"], "arm64")


class ShimObjects(unittest.TestCase):
    """catalog.shimObjects: the values' shims as Shim objects, the catalog controller, and RBAC for each."""

    def test_the_values_shims_render_as_shim_objects_instead_of_settings(self):
        values = load_values(HERE / "values" / "several-shims.yaml")
        values["catalog"] = {"shimObjects": True}
        docs = render(values)
        shims = {d["metadata"]["name"]: d for d in by_kind(docs, "Shim")}
        self.assertEqual(sorted(shims), ["spin", "wasmedge-arm", "wasmtime"])
        self.assertEqual(by_kind(docs, "RuntimeClass"), [], "the catalog controller keeps them")
        self.assertEqual(shims["spin"]["spec"]["runtimeClass"], {"name": "wasmtime-spin-v2", "create": True})
        text = by_kind(docs, "ConfigMap")[0]["data"]["config.toml"]
        self.assertIn("shim_objects = true", text)
        self.assertNotIn("[[shims]]", text)
        # Every rendered Shim is one the agents accept (import-shim checks ours as the agents do).
        agent = os.environ.get("KWASM_AGENT", str(ROOT / "target" / "debug" / "kwasm-agent"))
        out = subprocess.run([agent, "import-shim", "-"], input=yaml.safe_dump_all(shims.values()),
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len([d for d in yaml.safe_load_all(out.stdout) if d]), 3)

    def test_the_defaults_render_no_shim_object_and_no_controller(self):
        docs = render({})
        self.assertEqual(by_kind(docs, "Shim") + by_kind(docs, "Deployment"), [])
        self.assertTrue(by_kind(docs, "RuntimeClass"))
        (role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == RELEASE]
        self.assertNotIn("kwasm.sh", [g for rule in role["rules"] for g in rule["apiGroups"]])

    def test_each_component_gets_only_what_it_uses(self):
        docs = render(load_values(HERE / "values" / "shim-objects.yaml"))
        roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")}
        def grants(role, group, resource):
            return sorted({v for r in roles[role] if group in r["apiGroups"] and resource in r["resources"]
                           for v in r["verbs"]})
        self.assertEqual(grants(RELEASE, "kwasm.sh", "shims"), ["get", "list", "watch"])
        self.assertEqual(grants(RELEASE, "kwasm.sh", "shims/status"), [])
        catalog = f"{RELEASE}-catalog"
        self.assertEqual(grants(catalog, "kwasm.sh", "shims/status"), ["patch"])
        self.assertEqual(grants(catalog, "", "nodes"), ["list", "watch"], "reads Nodes, never writes them")
        self.assertEqual(grants(catalog, "node.k8s.io", "runtimeclasses"),
                         ["create", "delete", "get", "list", "update", "watch"])
        self.assertEqual(grants(f"{catalog}-events", "events.k8s.io", "events"), ["create", "patch"])
        leader = [r for r in roles[f"{catalog}-leader"] if "update" in r["verbs"]]
        self.assertEqual(leader[0]["resourceNames"], ["kwasm-catalog"])
        (deploy,) = by_kind(docs, "Deployment")
        pod = deploy["spec"]["template"]["spec"]
        self.assertEqual(pod["serviceAccountName"], catalog)
        self.assertEqual(pod["containers"][0]["args"][:1], ["catalog"])
        self.assertFalse(pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"])
        self.assertEqual(deploy["spec"]["replicas"], 2)
        # Probed as the agents are: /healthz (its Lease loop turns) and /readyz on the port the
        # settings make it listen on.
        container = pod["containers"][0]
        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "health"})
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "health"})
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "health"]
        (cm,) = by_kind(docs, "ConfigMap")
        self.assertIn(f'listen = "[::]:{port}"', cm["data"]["config.toml"])


class WhoMayWriteShims(unittest.TestCase):
    """Writing a Shim is as trusted as installing the DaemonSet: the chart grants it to nobody."""

    WRITE = {"create", "update", "patch", "delete", "deletecollection", "*"}

    def test_no_role_the_chart_renders_may_write_shims_or_aggregates(self):
        for name, values in ChartRenders().cases():
            for role in [d for d in render(values) if d["kind"] in ("ClusterRole", "Role")]:
                labels = role["metadata"].get("labels") or {}
                with self.subTest(values=name, role=role["metadata"]["name"]):
                    self.assertFalse([k for k in labels if k.startswith("rbac.authorization.k8s.io/aggregate-to-")])
                    self.assertNotIn("aggregationRule", role)
                    for rule in role.get("rules", []):
                        if {"kwasm.sh", "*"} & set(rule.get("apiGroups", [])):
                            for resource in rule.get("resources", []):
                                if resource in ("shims", "*"):
                                    self.assertFalse(self.WRITE & set(rule["verbs"]), rule)


class Monitoring(unittest.TestCase):
    """The optional PodMonitor and PrometheusRule, checked against the Prometheus Operator's own
    schemas (its CRDs as cloudcoil's models), and the rules by Prometheus's promtool: they load, and
    each alert fires on a failing fleet's series and none on a healthy one (alerts_test.yaml)."""

    VALUES = {"metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}},
                          "prometheusRule": {"enabled": True, "waitingFor": "45m"}}}

    def test_off_by_default(self):
        kinds = {d["kind"] for d in render({})}
        self.assertFalse(kinds & {"PodMonitor", "PrometheusRule"})

    def test_they_validate_against_the_operators_schemas(self):
        from cloudcoil.models.prometheus_operator import v1 as prom
        docs = render(self.VALUES)
        (monitor,) = by_kind(docs, "PodMonitor")
        (rule,) = by_kind(docs, "PrometheusRule")
        prom.PodMonitor.model_validate(monitor)
        prom.PrometheusRule.model_validate(rule)
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prom")
        (ds,) = by_kind(docs, "DaemonSet")
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"], ds["spec"]["selector"]["matchLabels"])
        ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        self.assertIn(monitor["spec"]["podMetricsEndpoints"][0]["port"], ports)
        # A field the Operator does not know is refused: the check is not a formality.
        broken = copy.deepcopy(rule)
        broken["spec"]["groups"][0]["rules"][0]["for"] = {"minutes": 10}
        with self.assertRaises(Exception):
            prom.PrometheusRule.model_validate(broken)

    def promtool(self, *args):
        """promtool (Debian's prometheus package, unpacked by scripts/prometheus.sh) on the rules the
        chart renders, in a directory beside the alerts' unit tests: (exit status, output)."""
        values = copy.deepcopy(self.VALUES)
        values["catalog"] = {"shimObjects": True}
        (rule,) = by_kind(render(values), "PrometheusRule")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
            Path(d, "alerts_test.yaml").write_text((HERE / "alerts_test.yaml").read_text())
            bin_dir = os.environ.get("KWASM_PROMETHEUS") or subprocess.run(
                ["bash", str(ROOT / "scripts" / "prometheus.sh")], capture_output=True, text=True,
                check=True).stdout.splitlines()[-1]
            run = subprocess.run([str(Path(bin_dir, "promtool")), *args], cwd=d, capture_output=True, text=True)
            return run.returncode, run.stdout + run.stderr

    def test_promtool_accepts_the_rules(self):
        code, out = self.promtool("check", "rules", "rules.yaml")
        self.assertEqual(code, 0, out)
        self.assertIn("SUCCESS: 5 rules found", out)

    def test_each_alert_fires_on_a_failing_fleet_and_none_on_a_healthy_one(self):
        code, out = self.promtool("test", "rules", "alerts_test.yaml")
        self.assertEqual(code, 0, out)


class InvalidValuesAreRefused(unittest.TestCase):
    def test_each_invalid_values_file_is_refused_at_render_time(self):
        files = sorted((HERE / "invalid").glob("*.yaml"))
        self.assertGreaterEqual(len(files), 8)
        for f in files:
            expect = f.read_text().splitlines()[0].removeprefix("# expect:").strip()
            with self.subTest(values=f.name):
                with self.assertRaises(helm.HelmError) as refused:
                    render(load_values(f), with_hooks=False)
                self.assertIn("schema", str(refused.exception))
                self.assertIn(expect, str(refused.exception))


def agent_pod(docs):
    return by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]


def settings_of(docs):
    cm = [c for c in by_kind(docs, "ConfigMap") if "config.toml" in c["data"]][0]
    return cm["data"]["config.toml"]


class SecurityModes(unittest.TestCase):
    """privileged (the default) and restricted: what each pod gets of the host."""

    def test_privileged_mounts_the_host_root_with_host_pid(self):
        pod = agent_pod(render({}, with_hooks=False))
        self.assertTrue(pod["hostPID"])
        self.assertTrue(pod["containers"][0]["securityContext"]["privileged"])
        self.assertIn({"name": "host", "hostPath": {"path": "/", "type": "Directory"}}, pod["volumes"])

    def test_restricted_has_no_privilege_and_only_the_paths_it_touches(self):
        docs = render(load_values(HERE / "values" / "restricted.yaml"), with_hooks=False)
        pod = agent_pod(docs)
        self.assertNotIn("hostPID", pod)
        ctx = pod["containers"][0]["securityContext"]
        self.assertEqual(ctx, {
            "privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["SYS_CHROOT"]},
            "seccompProfile": {"type": "RuntimeDefault"}})
        host = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
        self.assertEqual(host, {
            "/etc/containerd": "Directory", "/opt/kwasm": "DirectoryOrCreate",
            "/run/containerd": "Directory", "/run/dbus": "Directory", "/usr": "Directory",
            "/usr/local/bin": "Directory"})
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in pod["containers"][0]["volumeMounts"]}
        self.assertEqual(mounts, {
            "/host/etc/containerd": False, "/host/opt/kwasm": False, "/host/run/containerd": True,
            "/host/run/dbus": True, "/host/usr": True, "/host/usr/local/bin": False,
            "/etc/kwasm-agent": True})
        # Below containerd's socket directory are every container's root filesystem mounts.
        rro = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
               if m.get("recursiveReadOnly") == "IfPossible"}
        self.assertEqual(rro, {"/host/run/containerd", "/host/run/dbus", "/host/usr"})
        self.assertIn('restart = "dbus"', settings_of(docs))
        self.assertIn('in_use = "auto"', settings_of(docs))

    def test_restricted_on_k3s_mounts_k3s_paths(self):
        docs = render(load_values(HERE / "values" / "restricted-k3s.yaml"), with_hooks=False)
        pod = agent_pod(docs)
        host = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
        self.assertEqual(host, {
            "/var/lib/rancher/k3s/agent/etc/containerd": "Directory", "/var/lib/kwasm": "DirectoryOrCreate",
            "/run/k3s/containerd": "Directory", "/run/dbus": "Directory", "/usr": "Directory",
            "/var/lib/rancher/k3s/data": "Directory", "/etc/ssl/private-mirror.pem": "File"})

    def test_restricted_refuses_a_restart_command_run_as_the_host(self):
        values = load_values(HERE / "values" / "argv-restart.yaml")
        values["securityMode"] = "restricted"
        with self.assertRaises(helm.HelmError) as refused:
            render(values, with_hooks=False)
        self.assertIn("cannot run a restart command as the host", str(refused.exception))


class PlainManifests(unittest.TestCase):
    def test_manifests_deploy_matches_the_chart_defaults(self):
        chart = helm.Chart.load(str(CHART))
        rendered = render_plain(chart)
        for name, text in rendered.items():
            with self.subTest(file=name):
                path = ROOT / "manifests" / "deploy" / name
                self.assertTrue(path.exists(), f"{path} missing: run scripts/render-manifests.sh")
                self.assertEqual(path.read_text(), text, f"{path} is stale: run scripts/render-manifests.sh")


def render_plain(chart):
    """The chart's defaults as plain manifests for `kubectl apply -f`: the agent, the same in the
    restricted security mode, the same with the catalog as Shim objects (its controller and RBAC;
    the test clusters take their access rules from it), and (separately) the uninstall job to run
    before deleting any."""
    def split(values):
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        agent, uninstall = [], []
        for name in sorted(files):
            if name.endswith("NOTES.txt") or not files[name].strip():
                continue
            docs = [d for d in yaml.safe_load_all(files[name]) if d]
            if name.endswith("shim-tests.yaml"):
                continue  # `helm test` only
            (uninstall if name.endswith("uninstall-hook.yaml") else agent).extend(docs)
        return agent, uninstall

    def dump(docs, values="its default values"):
        header = f"# Rendered from manifests/helm/kwasm-agent with {values} by scripts/render-manifests.sh.\n"
        return header + "".join("---\n" + yaml.safe_dump(d, sort_keys=True) for d in docs)

    agent, uninstall = split({})
    restricted, _ = split({"securityMode": "restricted"})
    shim_objects, _ = split({"catalog": {"shimObjects": True}})
    return {"kwasm-agent.yaml": dump(agent), "kwasm-agent-uninstall.yaml": dump(uninstall),
            "kwasm-agent-restricted.yaml": dump(restricted, "securityMode=restricted"),
            "kwasm-agent-shim-objects.yaml": dump(shim_objects, "catalog.shimObjects=true")}


if __name__ == "__main__":
    unittest.main()
