//! OCI image archives written by the tests (no registry is reachable here): one layer holding the given
//! files, a config with the entrypoint, a manifest, and an index naming the image, in the OCI layout
//! that `ctr images import` reads — or, for several architectures, one image index (a manifest
//! list) naming a manifest per platform, as `docker buildx --platform a,b` pushes.

use std::path::Path;

use serde_json::json;

use crate::archive::sha256;

pub struct Image<'a> {
    /// Full reference, e.g. `registry.kwasm.test/hello:1`.
    pub name: &'a str,
    /// (path in the image, content, mode)
    pub files: Vec<(&'a str, Vec<u8>, u32)>,
    /// (path in the image, target)
    pub symlinks: Vec<(&'a str, &'a str)>,
    pub entrypoint: Vec<&'a str>,
    pub cmd: Vec<&'a str>,
    /// OCI annotations of the image config (`org.opencontainers.image.*`).
    pub labels: Vec<(&'a str, String)>,
    /// gzip the layer (what registries store; the size an image is measured by).
    pub compress: bool,
    /// OCI's name for the architecture the files are built for.
    pub architecture: &'a str,
}

impl<'a> Image<'a> {
    pub fn new(
        name: &'a str,
        files: Vec<(&'a str, Vec<u8>, u32)>,
        entrypoint: Vec<&'a str>,
    ) -> Self {
        Self {
            name,
            files,
            symlinks: vec![],
            entrypoint,
            cmd: vec![],
            labels: vec![],
            compress: false,
            architecture: oci_arch(),
        }
    }
}

/// This machine's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn descriptor(media: &str, blob: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media, "digest": format!("sha256:{}", sha256(blob)), "size": blob.len() })
}

/// One platform's image as blobs: (manifest, [layer, config, manifest], layer size as stored).
struct Built {
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    layer_size: usize,
}

impl Image<'_> {
    /// Writes the image archive to `dest`; returns the size of its layer as stored.
    pub fn write(&self, dest: &Path) -> usize {
        let built = self.build();
        let mut entry = descriptor(MANIFEST, &built.manifest);
        entry["annotations"] = name_annotations(self.name);
        entry["platform"] = json!({ "architecture": self.architecture, "os": "linux" });
        write_layout(dest, entry, built.blobs);
        built.layer_size
    }

    fn build(&self) -> Built {
        let tar = self.layer();
        let diff_id = format!("sha256:{}", sha256(&tar));
        let (layer, layer_type) = if self.compress {
            (
                crate::archive::gzip(&tar),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (tar, "application/vnd.oci.image.layer.v1.tar")
        };
        let labels: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect();
        let mut image_config =
            json!({ "Entrypoint": self.entrypoint, "Env": ["PATH=/usr/local/bin:/"] });
        if !self.cmd.is_empty() {
            image_config["Cmd"] = json!(self.cmd);
        }
        if !labels.is_empty() {
            image_config["Labels"] = labels.into();
        }
        let config = serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": image_config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor(layer_type, &layer)],
        }))
        .unwrap();
        let layer_size = layer.len();
        Built {
            blobs: vec![layer, config, manifest.clone()],
            manifest,
            layer_size,
        }
    }
    fn layer(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in &self.files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            // Fixed metadata: the same files make the same image, byte for byte.
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, path.trim_start_matches('/'), data.as_slice())
                .unwrap();
        }
        for (path, target) in &self.symlinks {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            b.append_link(&mut h, path.trim_start_matches('/'), target)
                .unwrap();
        }
        b.into_inner().unwrap()
    }
}

fn name_annotations(name: &str) -> serde_json::Value {
    json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
    })
}

/// Writes one image for several platforms (all named `name`) as an image index — one manifest per
/// platform, each with its platform — under the name; returns each image's layer size as stored.
pub fn write_index(name: &str, images: &[Image], dest: &Path) -> Vec<usize> {
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut sizes = Vec::new();
    for image in images {
        let built = image.build();
        let mut entry = descriptor(MANIFEST, &built.manifest);
        entry["platform"] = json!({ "architecture": image.architecture, "os": "linux" });
        manifests.push(entry);
        blobs.extend(built.blobs);
        sizes.push(built.layer_size);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    let mut entry = descriptor(INDEX, &index);
    entry["annotations"] = name_annotations(name);
    blobs.push(index);
    write_layout(dest, entry, blobs);
    sizes
}

/// The OCI layout as a tar: `oci-layout`, `index.json` naming `entry`, and every blob once.
fn write_layout(dest: &Path, entry: serde_json::Value, blobs: Vec<Vec<u8>>) {
    let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [entry] })).unwrap();
    let mut out = tar::Builder::new(std::fs::File::create(dest).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    let mut seen = std::collections::BTreeSet::new();
    for blob in &blobs {
        let digest = sha256(blob);
        if seen.insert(digest.clone()) {
            add(&format!("blobs/sha256/{digest}"), blob);
        }
    }
    out.finish().unwrap();
}
