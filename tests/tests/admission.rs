//! What the chart lets each identity do, judged by the real API server: its RBAC evaluated on the
//! server's own Roles and bindings, its admission policies run by upstream's ValidatingAdmissionPolicy
//! plugin, its Shim CRD's schema and CEL rules applied by upstream's CRD server — and the rendered
//! chart (manifests/deploy/, which the chart's tests keep equal to the chart) applied server-side.
//! Each identity is a bearer token as a cluster gives it: an agent's names the node its pod runs on.

use std::path::{Path, PathBuf};

use kwasm_tests::kube_api::{KubeApi, AGENT_SA, NAMESPACE, UNINSTALL_SA};

struct Cluster {
    api: KubeApi,
    _dir: tempfile::TempDir,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    for n in ["n1", "n2", "n3"] {
        api.add_node(n, "amd64");
    }
    // Upstream's plugin loads policies a moment after they are stored (under load, seconds): wait
    // until one refuses, with a server-side dry run that changes nothing. The chart's policies are
    // stored together, so they come into force together.
    let c = Cluster { api, _dir: dir };
    let n2 = c.agent("n2");
    let probe = [
        "label",
        "node",
        "n1",
        "kwasm.sh/probe=x",
        "--dry-run=server",
    ];
    kwasm_tests::agent::eventually("the chart's policies in force", || {
        c.try_as(&n2, &probe, None)
    });
    c
}

impl Cluster {
    fn agent(&self, node: &str) -> PathBuf {
        self.api.agent_kubeconfig(node)
    }

    /// None when the server allowed it; else what it answered.
    fn try_as(&self, who: &Path, args: &[&str], input: Option<&str>) -> Option<String> {
        let out = self.api.kubectl_as(who, args, input);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn allowed(&self, who: &Path, args: &[&str]) {
        if let Some(e) = self.try_as(who, args, None) {
            panic!("refused {args:?}: {e}");
        }
    }

    fn refused(&self, who: &Path, args: &[&str], reason: &str) {
        let e = self
            .try_as(who, args, None)
            .unwrap_or_else(|| panic!("allowed {args:?}"));
        assert!(
            e.contains(reason),
            "{args:?} refused, but not for {reason:?}: {e}"
        );
    }

    fn lease(&self, who: &Path, verb: &str, lease: serde_json::Value) -> Option<String> {
        self.try_as(who, &[verb, "-f", "-"], Some(&lease.to_string()))
    }
}

#[test]
fn an_agent_may_change_only_its_own_nodes_kwasm_keys() {
    let c = cluster();
    let (n1, n2) = (c.agent("n1"), c.agent("n2"));
    c.allowed(
        &n1,
        &[
            "label",
            "node",
            "n1",
            "kwasm.sh/kwasm-provisioned=true",
            "kwasm.sh/shim.spin=true",
        ],
    );
    c.allowed(
        &n1,
        &[
            "annotate",
            "node",
            "n1",
            "kwasm.sh/kwasm-status={\"phase\":\"Provisioned\"}",
        ],
    );
    c.allowed(&n1, &["label", "node", "n1", "kwasm.sh/shim.spin-"]);
    c.refused(
        &n2,
        &[
            "label",
            "node",
            "n1",
            "kwasm.sh/kwasm-provisioned=false",
            "--overwrite",
        ],
        "only the Node it runs on (its token names n2, not n1)",
    );
    let no_node = c
        .api
        .service_account_kubeconfig(AGENT_SA, "elsewhere", None);
    c.refused(
        &no_node,
        &["label", "node", "n1", "kwasm.sh/x=y"],
        "its token names no node",
    );
    c.refused(
        &n1,
        &["label", "node", "n1", "node-role.kubernetes.io/gpu=true"],
        "only kwasm.sh/ labels, not node-role.kubernetes.io/gpu",
    );
    c.refused(
        &n1,
        &["label", "node", "n1", "kubernetes.io/hostname-"],
        "only kwasm.sh/ labels",
    );
    c.refused(
        &n1,
        &["annotate", "node", "n1", "example.com/owner=me"],
        "only kwasm.sh/ annotations",
    );
    // (`kubectl cordon` says the server refused but exits 0: the patch it sends, by hand.)
    let cordon = r#"{"spec":{"unschedulable":true}}"#;
    c.refused(
        &n1,
        &["patch", "node", "n1", "-p", cordon],
        "may not change a Node's spec",
    );
    c.refused(
        &n1,
        &["taint", "node", "n1", "x=y:NoSchedule"],
        "may not change a Node's spec",
    );
    c.refused(
        &n1,
        &[
            "patch",
            "node",
            "n1",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["example.com/keep"]}}"#,
        ],
        "finalizers or owners",
    );
    // RBAC: what the chart grants is all an agent has.
    c.refused(&n1, &["get", "secrets", "-n", NAMESPACE], "forbidden");
    c.refused(&n1, &["delete", "node", "n1"], "forbidden");
    // Other users are not the policy's business.
    c.allowed(
        &c.api.kubeconfig,
        &["label", "node", "n1", "node-role.kubernetes.io/gpu=true"],
    );
}

#[test]
fn the_uninstall_hook_may_only_ask_for_an_uninstall() {
    let c = cluster();
    let hook = c
        .api
        .service_account_kubeconfig(UNINSTALL_SA, "kwasm-agent-uninstall", None);
    c.allowed(
        &hook,
        &[
            "annotate",
            "node",
            "n3",
            "kwasm.sh/uninstall=2026-12-07T18:00:00Z",
        ],
    );
    c.allowed(&hook, &["annotate", "node", "n3", "kwasm.sh/uninstall-"]);
    c.refused(
        &hook,
        &["label", "node", "n3", "kwasm.sh/kwasm-provisioned=false"],
        "may only set or clear the kwasm.sh/uninstall annotation",
    );
}

#[test]
fn an_agent_may_remove_the_startup_taint_from_its_node_and_nothing_else_of_the_spec() {
    let c = cluster();
    c.api.allow_startup_taint("kwasm.sh/provisioning");
    c.api.kubectl_ok(&[
        "taint",
        "node",
        "n1",
        "kwasm.sh/provisioning=true:NoSchedule",
        "dedicated=wasm:NoExecute",
    ]);
    let (n1, n2) = (c.agent("n1"), c.agent("n2"));
    c.refused(
        &n1,
        &["taint", "node", "n1", "dedicated-"],
        "except removing the startup taint",
    );
    c.refused(
        &n1,
        &["taint", "node", "n1", "x=y:NoSchedule"],
        "except removing the startup taint",
    );
    c.refused(
        &n2,
        &["taint", "node", "n1", "kwasm.sh/provisioning-"],
        "only the Node it runs on",
    );
    c.allowed(&n1, &["taint", "node", "n1", "kwasm.sh/provisioning-"]);
    let taints = c
        .api
        .kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.taints[*].key}"]);
    assert_eq!(taints, "dedicated");
}

fn lease(
    name: &str,
    holder: &str,
    labels: serde_json::Value,
    state: Option<&str>,
) -> serde_json::Value {
    let mut l = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60}});
    if let Some(s) = state {
        l["metadata"]["annotations"] = serde_json::json!({"kwasm.sh/permit": s});
    }
    l
}

fn permit(node: &str, state: &str) -> serde_json::Value {
    lease(
        &format!("kwasm-agent-permit-{node}"),
        node,
        serde_json::json!({"kwasm.sh/restart-permit": "true"}),
        Some(state),
    )
}

#[test]
fn only_the_grantor_grants_and_a_node_only_renews_or_gives_back_its_own_permit() {
    let c = cluster();
    let (n1, n2, n3) = (c.agent("n1"), c.agent("n2"), c.agent("n3"));
    let grantor = |holder| {
        lease(
            "kwasm-agent-restart-grantor",
            holder,
            serde_json::json!({}),
            None,
        )
    };
    // No grantor yet: nobody grants.
    let e = c.lease(&n1, "create", permit("n2", "granted")).unwrap();
    assert!(e.contains("no params found"), "{e}");
    let e = c.lease(&n1, "create", grantor("n2")).unwrap();
    assert!(
        e.contains("may take the grantor Lease only for itself"),
        "{e}"
    );
    assert_eq!(c.lease(&n1, "create", grantor("n1")), None);
    // n1 grants; nobody else does, and a permit is created granted and labelled.
    let e = c.lease(&n2, "create", permit("n2", "granted")).unwrap();
    assert!(e.contains("only the grantor (n1) grants"), "{e}");
    let mut unlabelled = permit("n2", "granted");
    unlabelled["metadata"]["labels"] = serde_json::json!({});
    let e = c.lease(&n1, "create", unlabelled).unwrap();
    assert!(
        e.contains("carries the label kwasm.sh/restart-permit=true"),
        "{e}"
    );
    let e = c.lease(&n1, "create", permit("n2", "taken")).unwrap();
    assert!(e.contains("created granted"), "{e}");
    assert_eq!(c.lease(&n1, "create", permit("n2", "granted")), None);
    // n2 renews its own and changes nothing else of it; n3 touches nobody's.
    let name = "kwasm-agent-permit-n2";
    let get = || -> serde_json::Value {
        serde_json::from_str(
            &c.api
                .kubectl_ok(&["get", "lease", "-n", NAMESPACE, name, "-o", "json"]),
        )
        .unwrap()
    };
    let mut renewed = get();
    renewed["spec"]["renewTime"] = "2026-12-07T18:00:00.000000Z".into();
    let e = c.lease(&n3, "replace", renewed.clone()).unwrap();
    assert!(e.contains("may only renew its own restart permit"), "{e}");
    assert_eq!(c.lease(&n2, "replace", renewed), None);
    let mut relabelled = get();
    relabelled["metadata"]["annotations"]["kwasm.sh/permit"] = "mine".into();
    let e = c.lease(&n2, "replace", relabelled).unwrap();
    assert!(e.contains("may only renew its own"), "{e}");
    // A node gives back (deletes) only its own; the grantor takes back (deletes) any.
    c.refused(
        &n3,
        &["delete", "lease", "-n", NAMESPACE, name],
        "only the grantor (n1)",
    );
    c.allowed(&n2, &["delete", "lease", "-n", NAMESPACE, name]);
    assert_eq!(c.lease(&n1, "create", permit("n3", "granted")), None);
    c.allowed(
        &n1,
        &["delete", "lease", "-n", NAMESPACE, "kwasm-agent-permit-n3"],
    );
    // Another component's Lease is nobody's to touch; the previous version's slots may go.
    c.api.kubectl_stdin(
        &["create", "-f", "-"],
        &lease("kwasm-catalog", "pod", serde_json::json!({}), None).to_string(),
    );
    c.refused(
        &n1,
        &["delete", "lease", "-n", NAMESPACE, "kwasm-catalog"],
        "may only use the restart grantor's Lease and restart permits",
    );
    c.api.kubectl_stdin(
        &["create", "-f", "-"],
        &lease(
            "kwasm-agent-restart-0",
            "n3",
            serde_json::json!({"kwasm.sh/restart-slot": "true"}),
            None,
        )
        .to_string(),
    );
    c.allowed(
        &n2,
        &["delete", "lease", "-n", NAMESPACE, "kwasm-agent-restart-0"],
    );
    // RBAC keeps agents to the chart's namespace.
    let elsewhere = lease("kwasm-agent-permit-n9", "n9", serde_json::json!({}), None)
        .to_string()
        .replace(NAMESPACE, "default");
    let e = c
        .try_as(&n1, &["create", "-f", "-"], Some(&elsewhere))
        .unwrap();
    assert!(e.contains("forbidden"), "{e}");
}

fn shim(platforms: serde_json::Value, binary: Option<&str>) -> String {
    let mut spec = serde_json::json!({"runtimeType": "io.containerd.spin.v2", "version": "v1", "platforms": platforms});
    if let Some(b) = binary {
        spec["binary"] = b.into();
    }
    serde_json::json!({"apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim", "metadata": {"name": "spin"}, "spec": spec}).to_string()
}

#[test]
fn the_shim_crd_refuses_what_its_schema_and_rules_refuse() {
    let c = cluster();
    let p = |arch: &str, url: &str| serde_json::json!({"arch": arch, "url": url, "sha256": "0".repeat(64)});
    let admin = &c.api.kubeconfig;
    let apply = |doc: String| c.try_as(admin, &["apply", "--server-side", "-f", "-"], Some(&doc));
    let e = apply(shim(
        serde_json::json!([p("amd64", "https://x/a.tgz")]),
        None,
    ))
    .unwrap();
    assert!(e.contains("spec.binary: Required value"), "{e}");
    let e = apply(shim(
        serde_json::json!([p("amd64", "ftp://x/a.tgz")]),
        Some("containerd-shim-spin-v2"),
    ))
    .unwrap();
    assert!(
        e.contains("spec.platforms[0].url") && e.contains("should match"),
        "{e}"
    );
    let twice = serde_json::json!([
        p("amd64", "https://x/a.tgz"),
        p("x86_64", "https://x/b.tgz")
    ]);
    let e = apply(shim(twice, Some("containerd-shim-spin-v2"))).unwrap();
    assert!(e.contains("one platform per architecture"), "{e}");
    let e = apply(
        shim(
            serde_json::json!([p("amd64", "https://x/a.tgz")]),
            Some("containerd-shim-spin-v2"),
        )
        .replace("\"version\":\"v1\"", "\"version\":\"v1\",\"unknown\":1"),
    )
    .unwrap();
    assert!(
        e.contains(".spec.unknown: field not declared in schema"),
        "{e}"
    );
    let both = serde_json::json!([p("amd64", "https://x/a.tgz"), p("arm64", "https://x/b.tgz")]);
    assert_eq!(apply(shim(both, Some("containerd-shim-spin-v2"))), None);
    let columns = c.api.kubectl_ok(&["get", "shims"]);
    assert!(
        columns.starts_with("NAME") && columns.contains("VERSION") && columns.contains("spin"),
        "{columns}"
    );
}

#[test]
fn the_rendered_chart_applies_server_side() {
    let c = cluster();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/deploy");
    for file in [
        "kwasm-agent.yaml",
        "kwasm-agent-restricted.yaml",
        "kwasm-agent-shim-objects.yaml",
        "kwasm-agent-uninstall.yaml",
    ] {
        let path = root.join(file);
        let out = c.api.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kinds = c.api.kubectl_ok(&[
        "get",
        "daemonset,deployment,runtimeclass,shims,job,validatingadmissionpolicy",
        "-A",
        "-o",
        "name",
    ]);
    for want in [
        "daemonset.apps/kwasm-agent",
        "deployment.apps/kwasm-agent-catalog",
        "shim.kwasm.sh/spin",
        "job.batch/kwasm-agent-uninstall",
        "validatingadmissionpolicy.admissionregistration.k8s.io/kwasm-agent-restart-grants",
    ] {
        assert!(kinds.contains(want), "{want} missing: {kinds}");
    }
}

#[test]
fn the_documented_shim_policy_admits_pinned_mirror_shims_only() {
    let c = cluster();
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shim-objects.md"),
    )
    .unwrap();
    let start = doc
        .find("apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\n")
        .expect("the documented policy");
    let policy = &doc[start..start + doc[start..].find("```").unwrap()];
    c.api.kubectl_stdin(&["apply", "-f", "-"], policy);
    let p = |url: &str, pinned: bool| {
        let mut p = serde_json::json!({"arch": "amd64", "url": url});
        if pinned {
            p["sha256"] = "0".repeat(64).into();
        }
        shim(serde_json::json!([p]), Some("containerd-shim-spin-v2"))
    };
    // The plugin takes a moment to load a new policy: the first refusal says it is in force. Asked
    // with a server-side dry run, so that a create let through before then stores nothing (an
    // apply would, and every apply after it would be unchanged: never sent, never refused).
    let mirror = "https://mirror.example.internal/spin.tar.gz";
    kwasm_tests::agent::eventually("the policy in force", || {
        c.try_as(
            &c.api.kubeconfig,
            &["create", "--dry-run=server", "-f", "-"],
            Some(&p(mirror, false)),
        )
        .filter(|e| e.contains("every platform must pin its sha256"))
    });
    let e = c
        .try_as(
            &c.api.kubeconfig,
            &["apply", "-f", "-"],
            Some(&p("https://github.com/spinframework/spin.tar.gz", true)),
        )
        .unwrap();
    assert!(
        e.contains("shims are downloaded only from https://mirror.example.internal/"),
        "{e}"
    );
    assert_eq!(
        c.try_as(
            &c.api.kubeconfig,
            &["apply", "-f", "-"],
            Some(&p(mirror, true))
        ),
        None
    );
}
