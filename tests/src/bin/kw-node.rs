//! A production-like systemd node for scripts (scripts/bench.sh, scripts/demo.sh --node):
//!   kw-node SERIES [--systemd-cgroup]
//! boots the node of tests/src/systemd_node.rs with containerd SERIES ("1.6", "1.7", "2.1"), prints
//! `PID <its PID 1> DIR <its sandbox directory, shared with the node>`, and keeps it until its standard
//! input closes (or it gets SIGTERM, SIGINT or SIGHUP); then tears it down (no process, mount or
//! cgroup left) and exits.

use std::io::{Read, Write};

use nix::sys::signal::{SigSet, Signal};

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
        config: None,
    };
    let node = SystemdNode::boot(&release, opts);
    // From here a signal is a request to tear down, not the end of this process (which would leave
    // the node running): it is taken with sigwait, and so is the end of the standard input.
    let mut stop = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop.add(s);
    }
    stop.thread_block().expect("blocking the stop signals");
    println!("PID {} DIR {}", node.pid, node.sb.path().display());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM);
    });
    let _ = stop.wait();
    drop(node);
}
