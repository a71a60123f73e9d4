//! OCI image archives written by the tests (no registry is reachable here): one layer holding the given
//! files, a config with the entrypoint, a manifest, and an index naming the image, in the OCI layout
//! that `ctr images import` reads.

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

impl Image<'_> {
    /// Writes the image archive to `dest`; returns the size of its layer as stored.
    pub fn write(&self, dest: &Path) -> usize {
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
            "architecture": oci_arch(),
            "os": "linux",
            "config": image_config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }))
        .unwrap();
        let descriptor = |media: &str, blob: &[u8]| json!({ "mediaType": media, "digest": format!("sha256:{}", sha256(blob)), "size": blob.len() });
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor(layer_type, &layer)],
        }))
        .unwrap();
        let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        entry["annotations"] = json!({
            "io.containerd.image.name": self.name,
            "org.opencontainers.image.ref.name": self.name.rsplit(':').next().unwrap_or("latest"),
        });
        entry["platform"] = json!({ "architecture": oci_arch(), "os": "linux" });
        let index =
            serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [entry] })).unwrap();

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
        for blob in [&layer, &config, &manifest] {
            add(&format!("blobs/sha256/{}", sha256(blob)), blob);
        }
        out.finish().unwrap();
        layer.len()
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
