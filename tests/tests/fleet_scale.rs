//! The fleet benchmark (`bench-rollout`, BENCHMARKS.md "A 5,000-node fleet") in small: 400 Nodes in
//! the tests' API server, 40 of them run by real agents with restarts of 1 s and 3 slots, the rest
//! simulated kubelets; the catalog controller following a Shim object. What must hold at any size:
//! exactly as many containerds down at once as the pacing allows, a fixed number of requests per node
//! to take its turn (no polling however long it waits), and the rollout close to the ideal
//! `ceil(nodes / slots) × restart`.

use std::collections::BTreeMap;
use std::process::Command;

fn run_benchmark() -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-rollout"))
        .args([
            "--agents",
            "40",
            "--nodes",
            "400",
            "--pacing",
            "3",
            "--restart",
            // Not shorter: a turn's handover (four requests, two watch events) takes 0.05–0.3 s on
            // a loaded 2-core machine; against 0.3 s restarts the ratio measured the machine (1.5–1.75
            // in CI), against 1 s it measures the pacing (1.05–1.08 here).
            "1",
            "--idle",
            "3",
        ])
        .output()
        .expect("bench-rollout runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench-rollout failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn number(figures: &BTreeMap<String, String>, key: &str) -> f64 {
    figures
        .get(key)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from the benchmark's output: {figures:#?}"))
}

#[test]
fn a_paced_rollout_of_a_simulated_400_node_fleet_keeps_its_pacing_and_never_polls() {
    let f = run_benchmark();
    assert_eq!(number(&f, "rollout_restarts"), 40.0, "{f:#?}");
    assert_eq!(
        number(&f, "rollout_most_down_at_once"),
        3.0,
        "as many down at once as the pacing allows, never more: {f:#?}"
    );
    // Join the line, be handed a slot, pass it on: the same few requests for the first node and
    // for the fortieth, which waited thirteen rounds.
    let per_node = number(&f, "rollout_lease_requests_per_node");
    assert!(
        per_node <= 7.0,
        "{per_node} Lease requests per node: {f:#?}"
    );
    // Loose here (a debug build on a loaded CI machine); the benchmark's own goal is 1.1.
    let ratio = number(&f, "rollout_converge_ratio");
    assert!(ratio <= 1.5, "converged in {ratio} × the ideal: {f:#?}");
    // An in-place upgrade needs no restart: nothing paced, nothing down.
    assert_eq!(number(&f, "upgrade_restarts"), 0.0, "{f:#?}");
    assert!(number(&f, "after_upgrade_catalog_peak_rss_kib") < 64.0 * 1024.0);
}
