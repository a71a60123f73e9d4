//! WebAssembly figures, each measured the same way as its baseline in the same run (medians):
//! - cold start: RunPodSandbox + CreateContainer + StartContainer until the first output line is in
//!   the container's log, for a WASI module on the wasm shim against the same line printed by a
//!   native static binary through runc;
//! - apply → first output: from `kwasm-agent apply` on a fresh node (download, verify, prove the
//!   shim starts, configure, restart containerd, prove the handler loaded) to a WASI pod's first line.
//!
//! Usage: bench-wasm ARCHIVE [RUNS]   (scripts/bench.sh passes the archive build-wasm-shim.sh made)

use std::time::{Duration, Instant};

use kwasm_tests::cri::{Container, Cri, Pod};
use kwasm_tests::node_host::{NodeHost, TestShim};
use kwasm_tests::workloads::{self, HELLO_LINE, HELLO_NATIVE, HELLO_WASM};

const WITHIN: Duration = Duration::from_secs(30);

fn node(archive: &[u8]) -> NodeHost {
    let shim = TestShim {
        name: "wasmtime".into(),
        binary: "containerd-shim-wasmtime-v1".into(),
        runtime_type: "io.containerd.wasmtime.v1".into(),
        archive: archive.to_vec(),
    };
    let n = NodeHost::serving(shim, "", |_| String::new());
    workloads::import_all(&n.cd, &n.sb.path().join("work"));
    n
}

/// One pod from nothing to its first line of output; the pod is removed afterwards (not timed).
fn first_output(cri: &mut Cri, n: &NodeHost, handler: &str, image: &str, run: usize) -> Duration {
    let logs = n.sb.path().join(format!("logs-{handler}-{run}"));
    let started = Instant::now();
    let pod: Pod = cri
        .run_pod(&format!("{handler}-{run}"), handler, &logs)
        .unwrap();
    let id = cri.start(&pod, &Container::new("hello", image)).unwrap();
    cri.wait_output(&pod, "hello", HELLO_LINE, WITHIN);
    let took = started.elapsed();
    cri.wait_exited(&pod, "hello", &id, WITHIN);
    cri.remove_pod(&pod).unwrap();
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let archive = std::fs::read(args.next().expect("usage: bench-wasm ARCHIVE [RUNS]")).unwrap();
    let runs: usize = args.next().map(|r| r.parse().unwrap()).unwrap_or(5);

    let mut to_output = Vec::new();
    let (mut wasm, mut native) = (Vec::new(), Vec::new());
    kwasm_tests::agent::agent_bin();
    for run in 0..runs {
        let n = node(&archive);
        let started = Instant::now();
        n.agent("apply", &[]).ok();
        let mut cri = Cri::connect(&n.cd.socket);
        let first = first_output(&mut cri, &n, "wasmtime", HELLO_WASM, run);
        to_output.push(started.elapsed());
        eprintln!(
            "run {run}: apply -> first output {:.3}s (pod part {:.3}s)",
            started.elapsed().as_secs_f64(),
            first.as_secs_f64()
        );
        // Warm containerd and caches alike for both sides, then alternate so drift hits both.
        for i in 0..3 {
            wasm.push(first_output(&mut cri, &n, "wasmtime", HELLO_WASM, 10 + i));
            native.push(first_output(&mut cri, &n, "runc", HELLO_NATIVE, 10 + i));
        }
    }
    let (w, r) = (median(wasm), median(native));
    let a = median(to_output);
    println!("wasm_cold_start_s {:.3}", w.as_secs_f64());
    println!("runc_cold_start_s {:.3}", r.as_secs_f64());
    println!(
        "wasm_vs_runc_ratio {:.2}",
        w.as_secs_f64() / r.as_secs_f64()
    );
    println!("apply_to_first_output_s {:.3}", a.as_secs_f64());
}
