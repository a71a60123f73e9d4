//! Serves files from memory over loopback HTTP for the benchmarks (as fast as the loopback allows, so
//! the server is never what is measured): `kw-serve FILE...` prints `PORT <n>` and serves each file
//! at `/<its name>` until killed.

use std::path::Path;

use kwasm_tests::artifact_server::{ArtifactServer, Behavior};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: kw-serve FILE...");
        std::process::exit(2);
    }
    let server = ArtifactServer::start();
    for f in &files {
        let name = Path::new(f)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let body = std::fs::read(f).unwrap_or_else(|e| panic!("reading {f}: {e}"));
        server.route(&format!("/{name}"), vec![Behavior::Serve(body)]);
    }
    println!("PORT {}", server.addr().port());
    loop {
        std::thread::park();
    }
}
