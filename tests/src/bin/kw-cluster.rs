//! The tests' Kubernetes API server for scripts (scripts/bench.sh):
//!   kw-cluster DIR [NODE ...]
//! starts tests/kube-apiserver on its etcd with the chart's access rules (`kube_api`), data in DIR,
//! registers each NODE as its kubelet would, prints `KUBECONFIG <the administrator's>`, `AUDIT <the
//! audit log>` and `AGENT <node> <its agent's kubeconfig>` per node, and keeps the cluster until its
//! standard input closes (or SIGTERM, SIGINT, SIGHUP); then stops it (no process left) and exits.

use std::io::{Read, Write};

use nix::sys::signal::{SigSet, Signal};

use kwasm_tests::kube_api::KubeApi;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: kw-cluster DIR [NODE ...]");
        std::process::exit(2);
    };
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block().expect("blocking the stop signals");
    let api = KubeApi::start(std::path::Path::new(dir));
    println!("KUBECONFIG {}", api.kubeconfig.display());
    println!("AUDIT {}", api.audit_log().display());
    for node in &args[1..] {
        api.add_node(node, "amd64");
        println!("AGENT {node} {}", api.agent_kubeconfig(node).display());
    }
    std::io::stdout().flush().unwrap();
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM);
    });
    let _ = stop.wait();
    drop(api);
}
