//! The long kill -9 and cycle suites (scripts/fault.sh):
//!   kw-fault [--runs N] [--cycles N] [--seed S]
//! Prints one line per run and a summary; exits non-zero when any check failed.

use kwasm_tests::fault::{cycle_suite, kill_suite};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
            .unwrap_or(default)
    };
    let (runs, cycles, seed) = (arg("--runs", 200), arg("--cycles", 100), arg("--seed", 1));
    let started = std::time::Instant::now();
    let kills = kill_suite(runs as usize, seed, |l| println!("{l}"));
    let loops = cycle_suite(cycles as usize, |l| println!("{l}"));
    println!(
        "kill -9: {} runs ({} killed, {} finished first), seed {seed}; cycles: {}; {} problem(s); {:.0} s",
        kills.runs,
        kills.killed,
        kills.finished_first,
        loops.runs,
        kills.problems.len() + loops.problems.len(),
        started.elapsed().as_secs_f64()
    );
    for p in kills.problems.iter().chain(&loops.problems) {
        println!("PROBLEM {p}");
    }
    if !(kills.problems.is_empty() && loops.problems.is_empty()) {
        std::process::exit(1);
    }
}
