//! A production-like systemd node for scripts (scripts/bench.sh, scripts/demo.sh --node):
//!   kw-node SERIES [--systemd-cgroup]
//! boots the node of tests/src/systemd_node.rs with containerd SERIES ("1.6", "1.7", "2.1"), prints
//! `PID <its PID 1> DIR <its sandbox directory, shared with the node>`, and keeps it until its standard
//! input closes; then tears it down (no process, mount or cgroup left) and exits.

use std::io::{Read, Write};

use kwasm_tests::systemd_node::{NodeOptions, Release, SystemdNode};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(series) = args.first() else {
        eprintln!("usage: kw-node SERIES [--systemd-cgroup]");
        std::process::exit(2);
    };
    let Some(release) = Release::find(series) else {
        eprintln!("kw-node: no containerd {series}.x (set KWASM_CONTAINERD_RELEASES)");
        std::process::exit(2);
    };
    let opts = NodeOptions {
        systemd_cgroup: args.iter().any(|a| a == "--systemd-cgroup"),
    };
    let node = SystemdNode::boot(&release, opts);
    println!("PID {} DIR {}", node.pid, node.sb.path().display());
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(node);
}
