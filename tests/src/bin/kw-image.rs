//! Packs the agent's static binary as its container image, offline (no Docker daemon here): the same
//! image images/Dockerfile builds — the binary and CA certificates on an empty base — written as an
//! OCI image archive that `ctr images import` (or skopeo) accepts.
//!
//! Usage: kw-image BINARY CA_BUNDLE NAME:TAG OUT.tar   (scripts/build-image.sh runs it)

use std::path::Path;

use kwasm_tests::oci::Image;

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
    let [binary, ca, name, out] = args.as_slice() else {
        eprintln!("usage: kw-image BINARY CA_BUNDLE NAME:TAG OUT.tar");
        std::process::exit(2);
    };
    let version = name.rsplit(':').next().unwrap_or("").to_owned();
    let image = Image {
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
                (
                    "/usr/local/bin/kwasm-agent",
                    std::fs::read(binary).expect("the agent binary"),
                    0o755,
                ),
                (
                    "/etc/ssl/certs/ca-certificates.crt",
                    std::fs::read(ca).expect("a CA bundle"),
                    0o644,
                ),
            ],
            vec!["/usr/local/bin/kwasm-agent"],
        )
    };
    let layer = image.write(Path::new(out));
    eprintln!("layer {layer} bytes (compressed)");
}
