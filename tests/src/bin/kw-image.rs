//! Packs the agent's static binaries as its container image, offline (no Docker daemon here): the same
//! image images/Dockerfile builds — the binary and CA certificates on an empty base — one per
//! architecture under one image index (a manifest list, each manifest with its platform), written as
//! an OCI image archive that `ctr images import --all-platforms` and skopeo accept.
//!
//! Usage: kw-image CA_BUNDLE NAME:TAG OUT.tar ARCH=BINARY...   (scripts/build-image.sh runs it;
//! ARCH as OCI names it: amd64, arm64)

use std::path::Path;

use kwasm_tests::oci::{write_index, Image};

/// /host in the restricted security mode holds only the host paths the chart mounts, /usr among
/// them; the host's own programs run chrooted there (the shim's start probe, containerd validating a
/// config) and find their loader and libraries through a merged-/usr layout, as the host has it.
/// In privileged mode the host's / is mounted over /host and these are not seen.
const HOST_ROOT_LINKS: [(&str, &str); 4] = [
    ("/host/bin", "usr/bin"),
    ("/host/sbin", "usr/sbin"),
    ("/host/lib", "usr/lib"),
    ("/host/lib64", "usr/lib64"),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ca, name, out, binaries @ ..] = args.as_slice() else {
        usage();
    };
    let ca = std::fs::read(ca).expect("a CA bundle");
    let builds: Vec<(&str, Vec<u8>)> = binaries
        .iter()
        .map(|b| match b.split_once('=') {
            Some((arch, path)) => (arch, std::fs::read(path).expect("the agent binary")),
            None => usage(),
        })
        .collect();
    if builds.is_empty() {
        usage();
    }
    let images: Vec<Image> = builds
        .iter()
        .map(|(arch, binary)| image(name, arch, binary.clone(), ca.clone()))
        .collect();
    let sizes = write_index(name, &images, Path::new(out));
    for ((arch, binary), layer) in builds.iter().zip(sizes) {
        eprintln!(
            "{arch}: binary {} bytes, layer {layer} bytes (compressed)",
            binary.len()
        );
    }
}

fn usage() -> ! {
    eprintln!("usage: kw-image CA_BUNDLE NAME:TAG OUT.tar ARCH=BINARY...");
    std::process::exit(2);
}

fn image<'a>(name: &'a str, arch: &'a str, binary: Vec<u8>, ca: Vec<u8>) -> Image<'a> {
    let version = name.rsplit(':').next().unwrap_or("").to_owned();
    Image {
        architecture: arch,
        cmd: vec!["run", "--config", "/etc/kwasm-agent/config.toml"],
        labels: vec![
            ("org.opencontainers.image.title", "kwasm-agent".into()),
            (
                "org.opencontainers.image.description",
                "Node agent that installs verified WebAssembly containerd shims and wires them into containerd".into(),
            ),
            ("org.opencontainers.image.version", version),
            ("org.opencontainers.image.licenses", "Apache-2.0".into()),
            (
                "org.opencontainers.image.source",
                "https://github.com/kwasm/kwasm-agent".into(),
            ),
        ],
        compress: true,
        symlinks: HOST_ROOT_LINKS.to_vec(),
        ..Image::new(
            name,
            vec![
                ("/usr/local/bin/kwasm-agent", binary, 0o755),
                ("/etc/ssl/certs/ca-certificates.crt", ca, 0o644),
            ],
            vec!["/usr/local/bin/kwasm-agent"],
        )
    }
}
