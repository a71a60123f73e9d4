//! The test workloads (sources in tests/workloads/), built at test time: WASI modules from WAT with
//! Debian's wabt, native programs with the C compiler (static, so an image needs nothing else), each
//! packed as an OCI image and imported into a sandbox containerd's CRI namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::containerd::{Containerd, PAUSE_IMAGE};
use crate::oci::Image;

pub const HELLO_WASM: &str = "registry.kwasm.test/hello-wasm:1";
pub const EXIT42_WASM: &str = "registry.kwasm.test/exit42-wasm:1";
pub const WRITE_FILE_WASM: &str = "registry.kwasm.test/write-file-wasm:1";
/// `helm test`'s workload: exits 0 given the argument "kwasm" and KWASM_TEST=ok, else 1.
pub const SELFTEST_WASM: &str = "registry.kwasm.test/selftest-wasm:1";
pub const HELLO_NATIVE: &str = "registry.kwasm.test/hello-native:1";
/// The line hello.wat and hello.c both print first.
pub const HELLO_LINE: &str = "hello from kwasm-agent's test workload";

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads")
        .join(name)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A WASI module compiled from `<name>.wat`.
pub fn wasm(name: &str, work: &Path) -> Vec<u8> {
    let out = work.join(format!("{name}.wasm"));
    run(Command::new("wat2wasm")
        .arg(source(&format!("{name}.wat")))
        .arg("-o")
        .arg(&out));
    std::fs::read(out).unwrap()
}

/// A static native program compiled from `<name>.c`.
pub fn native(name: &str, work: &Path) -> Vec<u8> {
    let out = work.join(name);
    run(Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(source(&format!("{name}.c"))));
    std::fs::read(out).unwrap()
}

/// Builds every test image as an OCI archive in `work`: (image name, archive path).
pub fn build_all(work: &Path) -> Vec<(&'static str, PathBuf)> {
    std::fs::create_dir_all(work).unwrap();
    let images = [
        (PAUSE_IMAGE, "/pause", native("pause", work)),
        (HELLO_NATIVE, "/hello", native("hello", work)),
        (HELLO_WASM, "/hello.wasm", wasm("hello", work)),
        (EXIT42_WASM, "/exit42.wasm", wasm("exit42", work)),
        (
            WRITE_FILE_WASM,
            "/write-file.wasm",
            wasm("write-file", work),
        ),
        (SELFTEST_WASM, "/selftest.wasm", wasm("selftest", work)),
    ];
    images
        .into_iter()
        .map(|(name, entry, program)| {
            let archive = work.join(format!("{}.tar", name.replace(['/', ':'], "_")));
            Image::new(name, vec![(entry, program, 0o755)], vec![entry]).write(&archive);
            (name, archive)
        })
        .collect()
}

/// Builds every test image and imports it into `cd`'s `k8s.io` namespace (where CRI looks).
pub fn import_all(cd: &Containerd, work: &Path) {
    for (name, archive) in build_all(work) {
        let out = cd.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            archive.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "importing {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
