//! scripts/aks-nodepool.sh against recording stand-ins for `az`, `helm` and `kubectl` on PATH (no
//! Azure here): the commands it runs, with their arguments, for a new pool, an existing pool whose
//! labels must survive, a dry run, and nodes that never become ready.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Stage {
    dir: tempfile::TempDir,
}

/// A stand-in that records `<name> <args…>` and answers like the real tool for what the script asks.
const AZ: &str = r#"#!/bin/sh
echo "az $*" >> "$STAND_IN_LOG"
case "$*" in
  "aks nodepool show"*"--query nodeLabels"*) echo '{"team": "payments", "kwasm.sh/kwasm-node": "false"}' ;;
  "aks nodepool show"*) [ "$POOL_EXISTS" = yes ] || exit 3 ;;
  "aks get-credentials"*) ;;
esac
"#;
const HELM: &str = "#!/bin/sh\necho \"helm $*\" >> \"$STAND_IN_LOG\"\n";
const KUBECTL: &str = r#"#!/bin/sh
echo "kubectl $*" >> "$STAND_IN_LOG"
case "$*" in
  "get nodes"*) printf 'aks-wasm-0=true\naks-wasm-1=%s\n' "$SECOND_NODE" ;;
  "apply --filename -"*) cat > "$STAND_IN_LOG.pod" ;;
esac
"#;

impl Stage {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [("az", AZ), ("helm", HELM), ("kubectl", KUBECTL)] {
            let p = dir.path().join("bin").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        Self { dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<String>, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/aks-nodepool.sh");
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        let out = Command::new("bash")
            .arg(script)
            .args(args)
            .env("PATH", path)
            .env("STAND_IN_LOG", self.log())
            .env("TMPDIR", self.dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        (
            out.status.code().unwrap_or(-1),
            calls,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

const POOL: [&str; 6] = [
    "--resource-group",
    "rg1",
    "--cluster",
    "aks1",
    "--nodepool",
    "wasm",
];

fn has(calls: &[String], prefix: &str) -> bool {
    calls.iter().any(|c| c.starts_with(prefix))
}

#[test]
fn a_new_pool_is_added_with_the_label_and_taint_then_proven_with_a_wasm_pod() {
    let s = Stage::new();
    let args = [&POOL[..], &["--node-count", "3", "--taint"]].concat();
    let (code, calls, err) = s.run(&args, &[("POOL_EXISTS", "no"), ("SECOND_NODE", "true")]);
    assert_eq!(code, 0, "{err}\n{calls:#?}");
    assert!(
        has(&calls, "az aks nodepool add --resource-group rg1 --cluster-name aks1 --name wasm --node-count 3 --os-type Linux --labels kwasm.sh/kwasm-node=true --node-taints kwasm.sh/provisioning=true:NoSchedule"),
        "{calls:#?}"
    );
    assert!(
        has(
            &calls,
            "az aks get-credentials --resource-group rg1 --name aks1 --file "
        ),
        "{calls:#?}"
    );
    assert!(
        has(&calls, "helm upgrade --install kwasm-agent manifests/helm/kwasm-agent --namespace kube-system --wait"),
        "{calls:#?}"
    );
    assert!(
        has(&calls, "kubectl get nodes --selector agentpool=wasm"),
        "{calls:#?}"
    );
    assert!(
        has(
            &calls,
            "kubectl wait --namespace default --for=condition=Ready pod/kwasm-sample-wasm"
        ),
        "{calls:#?}"
    );
    assert!(
        has(
            &calls,
            "kubectl delete pod --namespace default kwasm-sample-wasm"
        ),
        "{calls:#?}"
    );
    let pod = std::fs::read_to_string(s.log().with_extension("log.pod")).unwrap();
    assert!(pod.contains("runtimeClassName: wasmtime-spin-v2"), "{pod}");
    assert!(pod.contains("nodeSelector: { agentpool: wasm }"), "{pod}");
    // Nothing is added when the pool is new and no update is made.
    assert!(!has(&calls, "az aks nodepool update"), "{calls:#?}");
    // The kubeconfig is the script's own temp file, removed at the end.
    assert!(std::fs::read_dir(s.dir.path())
        .unwrap()
        .flatten()
        .all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with("kwasm-aks-kubeconfig")));
}

#[test]
fn an_existing_pool_keeps_its_labels_and_gains_the_trigger() {
    let s = Stage::new();
    let (code, calls, err) = s.run(&POOL, &[("POOL_EXISTS", "yes"), ("SECOND_NODE", "true")]);
    assert_eq!(code, 0, "{err}\n{calls:#?}");
    assert!(
        has(&calls, "az aks nodepool update --resource-group rg1 --cluster-name aks1 --name wasm --labels team=payments kwasm.sh/kwasm-node=true"),
        "{calls:#?}"
    );
    assert!(!has(&calls, "az aks nodepool add"), "{calls:#?}");
}

#[test]
fn a_dry_run_prints_every_command_and_runs_none() {
    let s = Stage::new();
    let args = [&POOL[..], &["--taint", "--dry-run"]].concat();
    let (code, calls, err) = s.run(&args, &[("POOL_EXISTS", "no")]);
    assert_eq!(code, 0, "{err}");
    assert!(calls.is_empty(), "a dry run ran {calls:#?}");
    for expected in [
        "+ az aks nodepool add --resource-group rg1 --cluster-name aks1 --name wasm --node-count 2",
        "+ az aks get-credentials",
        "+ helm upgrade --install kwasm-agent",
        "+ kubectl get nodes --selector agentpool=wasm",
        "+ kubectl apply --filename -",
        "runtimeClassName: wasmtime-spin-v2",
        "+ kubectl wait",
        "+ kubectl delete pod",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn nodes_that_never_become_ready_fail_with_their_names() {
    let s = Stage::new();
    let args = [&POOL[..], &["--timeout", "1"]].concat();
    let (code, calls, err) = s.run(&args, &[("POOL_EXISTS", "no"), ("SECOND_NODE", "false")]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("aks-wasm-1=false") && err.contains("kubectl describe node"),
        "{err}"
    );
    assert!(
        !has(&calls, "kubectl apply"),
        "a sample pod on nodes not ready: {calls:#?}"
    );
}

#[test]
fn bad_arguments_are_refused_with_the_usage() {
    let s = Stage::new();
    let (code, calls, err) = s.run(&["--cluster", "aks1"], &[]);
    assert_eq!(code, 2);
    assert!(calls.is_empty());
    assert!(err.contains("--resource-group RG"), "{err}");
    let (code, _, err) = s.run(&[&POOL[..], &["--node-count", "many"]].concat(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--node-count must be a number"), "{err}");
}
