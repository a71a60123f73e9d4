"""Helm's own engine (helm-python-sdk: Helm v4's library) as a command, for the Rust tests that run
`helm install`, `helm upgrade`, `helm uninstall` and `helm test` against the tests' API server:

    helm_cli.py KUBECONFIG install|upgrade|uninstall|test RELEASE [VALUES_JSON]
    helm_cli.py - template RELEASE [VALUES_JSON]      (no cluster: the rendered objects, as JSON)

The chart is manifests/helm/kwasm-agent, in the chart's namespace (kube-system); what Helm answers
is printed as JSON; a refusal exits 1 with Helm's message on stderr.
"""

import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "manifests" / "helm" / "kwasm-agent"
NAMESPACE = "kube-system"
TIMEOUT = 180


def main():
    kubeconfig, verb, release = sys.argv[1:4]
    values = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    chart = helm.Chart.load(str(CHART))
    if verb == "template":
        config = helm.Config(storage_driver="memory", namespace=NAMESPACE)
        release = config.install(chart, release, values, dry_run="client", namespace=NAMESPACE)
        print(json.dumps([d for d in yaml.safe_load_all(release["manifest"]) if d]))
        return
    config = helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE)
    try:
        if verb == "install":
            out = config.install(chart, release, values, namespace=NAMESPACE, timeout=TIMEOUT)
        elif verb == "upgrade":
            out = config.upgrade(chart, release, values, namespace=NAMESPACE, timeout=TIMEOUT)
        elif verb == "uninstall":
            out = config.uninstall(release, timeout=TIMEOUT)
        elif verb == "test":
            # Logs come through the kubelet, which the tests' cluster has none of: the harness reads them.
            out = config.test(release, timeout=TIMEOUT, logs=False)
        else:
            sys.exit(f"unknown verb {verb}")
    except helm.HelmError as e:
        print(f"helm {verb}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
