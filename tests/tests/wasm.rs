//! WebAssembly for real: a wasmtime shim built from runwasi's published crates (tests/wasm-shim, by
//! scripts/build-wasm-shim.sh) is installed by `kwasm-agent apply` like any shim release, and WASI
//! modules then run through the handler the agent configured — started the way the kubelet starts
//! them, through containerd's CRI API with the RuntimeClass's handler name.
//!
//! The archive's path comes from KWASM_WASM_SHIM_ARCHIVE (scripts/test.sh builds it and sets it).
//! Without it the test is skipped, except under CI where that is a failure.

use std::time::{Duration, Instant};

use kwasm_tests::built::wasm_shim_archive;
use kwasm_tests::containerd::pids_mentioning;
use kwasm_tests::cri::{Container, Cri};
use kwasm_tests::node_host::{NodeHost, TestShim};
use kwasm_tests::workloads::{self, EXIT42_WASM, HELLO_LINE, HELLO_WASM, WRITE_FILE_WASM};

const HANDLER: &str = "wasmtime";
const BIN: &str = "containerd-shim-wasmtime-v1";
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn node(archive: Vec<u8>) -> NodeHost {
    let shim = TestShim {
        name: HANDLER.into(),
        binary: BIN.into(),
        runtime_type: "io.containerd.wasmtime.v1".into(),
        archive,
    };
    NodeHost::serving(shim, "", |_| String::new())
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wasi_modules_run_through_cri_on_the_handler_the_agent_configured() {
    let Some(archive) = wasm_shim_archive() else {
        return;
    };
    let n = node(archive);
    // Clients that name the runtime (ctr, nerdctl) find the shim through a link on containerd's PATH.
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap().replace(
        "[containerd]\n",
        &format!("[containerd]\nlink_dir = \"{}\"\n", n.cd.path_dir.display()),
    );
    n.sb.write_settings(&settings);
    let work = n.sb.path().join("work");
    workloads::import_all(&n.cd, &work);
    let runc_pid = n.cd.run_container("before", None);

    n.agent("apply", &[]).ok();
    let st = n.status();
    assert_eq!(st["shims"][0]["name"], HANDLER);
    assert_eq!(st["shims"][0]["loaded"], true, "{st}");

    let mut cri = Cri::connect(&n.cd.socket);
    let pod = cri
        .run_pod("wasm-e2e", HANDLER, &n.sb.path().join("pod-logs"))
        .expect("a pod sandbox on the wasmtime handler (its pause container runs natively)");

    // Output, argument and environment reach the module.
    let mut hello = Container::new("hello", HELLO_WASM);
    hello.args = vec!["from-the-pod-spec"];
    hello.env = vec![("GREETING", "hej".into())];
    let id = cri.start(&pod, &hello).unwrap();
    let exited = cri.wait_exited(&pod, "hello", &id, EXIT_WITHIN);
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert_eq!(
        exited.log,
        format!("{HELLO_LINE}\narg: from-the-pod-spec\nenv: GREETING=hej\n"),
        "{exited:?}"
    );

    // A failing module's exit code is reported as such.
    let id = cri
        .start(&pod, &Container::new("exit42", EXIT42_WASM))
        .unwrap();
    let exited = cri.wait_exited(&pod, "exit42", &id, EXIT_WITHIN);
    assert_eq!(exited.exit_code, 42, "{exited:?}");
    assert_eq!(exited.log, "exiting with status 42\n");

    // A file written by the module lands in the mounted directory.
    let data = n.sb.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut writer = Container::new("write-file", WRITE_FILE_WASM);
    writer.mounts = vec![("/data", data.clone())];
    let id = cri.start(&pod, &writer).unwrap();
    let exited = cri.wait_exited(&pod, "write-file", &id, EXIT_WITHIN);
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "written by a WASI module\n"
    );

    // The same install serves clients that name the runtime instead of the handler.
    let rootfs = n.sb.path().join("wasm-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("hello.wasm"), workloads::wasm("hello", &work)).unwrap();
    let by_name = ctr_run_by_runtime_name(&n, &rootfs);
    assert!(by_name.starts_with(HELLO_LINE), "{by_name:?}");

    // The pod's shim process runs the installed binary: remove must leave it alone.
    let r = n.agent("remove", &[]);
    r.failed();
    assert!(r.reason().contains("wasmtime is in use"), "{}", r.reason());
    assert!(n.binary().exists());
    assert!(n.config().contains("runtimes.wasmtime]"));

    cri.remove_pod(&pod).unwrap();
    let binary = n.binary();
    eventually("the pod's shim to exit", Duration::from_secs(20), || {
        pids_mentioning(&binary.to_string_lossy()).is_empty()
    });
    n.agent("remove", &[]).ok();
    assert_eq!(
        n.config(),
        n.original,
        "config not byte-identical after remove"
    );
    assert!(!n.binary().exists());
    assert!(
        n.cd.path_dir.join(BIN).symlink_metadata().is_err(),
        "the runtime-name link outlived the shim"
    );
    assert_eq!(
        n.cd.task_pid("before"),
        Some(runc_pid),
        "the runc container was disturbed"
    );
    assert!(pids_mentioning(&binary.to_string_lossy()).is_empty());
}

/// `ctr run --runtime io.containerd.wasmtime.v1`: containerd resolves the name on its PATH. ctr waits
/// for the task and prints its output.
fn ctr_run_by_runtime_name(n: &NodeHost, rootfs: &std::path::Path) -> String {
    let id = format!("by-name-{}", std::process::id());
    let out = n.cd.ctr(&[
        "run",
        "--rm",
        "--rootfs",
        "--runtime",
        "io.containerd.wasmtime.v1",
        rootfs.to_str().unwrap(),
        &id,
        "/hello.wasm",
    ]);
    assert!(
        out.status.success(),
        "ctr run --runtime io.containerd.wasmtime.v1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
