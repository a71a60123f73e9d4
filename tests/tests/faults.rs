//! The kill -9 and cycle suites, short (the long ones: scripts/fault.sh). Every named step of apply
//! and remove is killed once, then a few random moments; then apply/remove cycles with live
//! containers. KWASM_FAULT_RUNS / KWASM_FAULT_CYCLES make them longer.

use kwasm_tests::fault::{cycle_suite, kill_suite, APPLY_STEPS, REMOVE_STEPS};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn killed_at_any_step_the_host_stays_safe_and_the_next_run_converges() {
    // Both operations alternate: twice the longer list covers every named step, plus random ones.
    let named = 2 * APPLY_STEPS.len().max(REMOVE_STEPS.len());
    let runs = env_or("KWASM_FAULT_RUNS", named + 44);
    let seed = env_or("KWASM_FAULT_SEED", 20261124) as u64;
    let out = kill_suite(runs, seed, |line| eprintln!("{line}"));
    assert!(out.problems.is_empty(), "{:#?}", out.problems);
    assert_eq!(out.runs, runs);
    assert!(
        out.killed >= named - 2,
        "only {} of {} runs were killed",
        out.killed,
        runs
    );
}

#[test]
fn apply_remove_cycles_leave_containers_config_and_files_as_they_were() {
    let out = cycle_suite(env_or("KWASM_FAULT_CYCLES", 25), |line| eprintln!("{line}"));
    assert!(out.problems.is_empty(), "{:#?}", out.problems);
}
