//! The settings file (TOML). The Helm chart renders it into a ConfigMap; `kwasm-agent apply --config`
//! reads it on a bare host. Every key has a default so an empty file is valid; unknown keys are errors
//! so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};

use crate::arch::Arch;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("settings file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub host: HostSettings,
    pub trigger: TriggerSettings,
    pub agent: AgentSettings,
    pub artifacts: ArtifactSettings,
    pub containerd: ContainerdSettings,
    pub shims: Vec<Shim>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    pub root: PathBuf,
    pub install_dir: PathBuf,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/host"),
            install_dir: PathBuf::from("/opt/kwasm"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerSettings {
    pub annotation: String,
    pub label: String,
    /// Annotation that narrows the catalog to a comma-separated subset of shim names.
    pub shims_annotation: String,
    /// Keep the shims and config on the host when the trigger is removed.
    pub keep_on_untrigger: bool,
}

impl Default for TriggerSettings {
    fn default() -> Self {
        Self {
            annotation: "kwasm.sh/kwasm-node".into(),
            label: "kwasm.sh/kwasm-node".into(),
            shims_annotation: "kwasm.sh/shims".into(),
            keep_on_untrigger: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    pub listen: String,
    /// How often `run` re-checks the host for drift even without a Node change.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// Upper bound of the retry backoff after a failed reconcile.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9101".into(),
            resync: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactSettings {
    pub allow_http: bool,
    pub allow_unverified: bool,
    /// URL prefix rewrites; the longest matching prefix wins.
    pub mirrors: BTreeMap<String, String>,
    /// Extra PEM bundle (host path, resolved under the host root) trusted for HTTPS.
    pub ca_bundle: String,
    pub max_size: ByteSize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A download that receives no byte for this long is abandoned (and retried).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Attempts per artifact for retryable failures (connection errors, 5xx, truncated or stalled bodies).
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_unverified: false,
            mirrors: BTreeMap::new(),
            ca_bundle: String::new(),
            max_size: ByteSize::mib(512),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            attempts: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartMethod {
    Systemd,
    None,
    /// A command run as the host (in its namespaces when the agent runs in a pod).
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for RestartMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Argv(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "systemd" => Ok(Self::Systemd),
            Raw::Name(n) if n == "none" => Ok(Self::None),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "expected \"systemd\", \"none\" or an argv array, found \"{n}\""
            ))),
            Raw::Argv(v) if v.is_empty() => Err(serde::de::Error::custom(
                "an argv array needs at least the program",
            )),
            Raw::Argv(v) => Ok(Self::Argv(v)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdSettings {
    pub config: String,
    pub restart: RestartMethod,
    pub unit: String,
    pub socket: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Path of the containerd binary used to validate a candidate config ("auto": look on the host).
    pub binary: String,
    /// A host directory on containerd's PATH (e.g. /usr/local/bin) where each shim is also linked
    /// under the name its runtime_type maps to, for clients that name the runtime rather than the
    /// handler (`ctr run --runtime io.containerd.wasmtime.v1`, nerdctl). None: no links.
    pub link_dir: Option<PathBuf>,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self {
            config: "auto".into(),
            restart: RestartMethod::Systemd,
            unit: "auto".into(),
            socket: "auto".into(),
            timeout: Duration::from_secs(30),
            binary: "auto".into(),
            link_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shim {
    pub name: String,
    pub runtime_type: String,
    pub binary: String,
    pub version: String,
    #[serde(default)]
    pub options: Option<toml::Table>,
    #[serde(default)]
    pub platforms: Vec<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    pub arch: Arch,
    pub url: String,
    #[serde(default)]
    pub sha256: Option<String>,
}

impl Shim {
    pub fn platform(&self, arch: Arch) -> Option<&Platform> {
        self.platforms.iter().find(|p| p.arch == arch)
    }
}

impl Settings {
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// `origin` only names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, SettingsError> {
        let settings: Settings = toml::from_str(text).map_err(|e| SettingsError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        settings.validate(origin)?;
        Ok(settings)
    }

    fn validate(&self, origin: &Path) -> Result<(), SettingsError> {
        let invalid = |key: String, message: String| SettingsError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        };
        if !self.host.install_dir.is_absolute() {
            return Err(invalid(
                "host.install_dir".into(),
                "expected an absolute host path".into(),
            ));
        }
        if let Some(d) = self
            .containerd
            .link_dir
            .as_ref()
            .filter(|d| !d.is_absolute())
        {
            return Err(invalid(
                "containerd.link_dir".into(),
                format!("expected an absolute host path, found {}", d.display()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, shim) in self.shims.iter().enumerate() {
            let key = |k: &str| format!("shims[{i}].{k}");
            if !is_handler_name(&shim.name) {
                return Err(invalid(
                    key("name"),
                    format!("expected a CRI handler name (lowercase letters, digits, '-', '_'), found {:?}", shim.name),
                ));
            }
            if !seen.insert(shim.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("shim {:?} is listed twice", shim.name),
                ));
            }
            if shim.binary.is_empty() || shim.binary.contains('/') || shim.binary.starts_with('.') {
                return Err(invalid(
                    key("binary"),
                    format!("expected a plain file name, found {:?}", shim.binary),
                ));
            }
            if shim.runtime_type.is_empty() {
                return Err(invalid(key("runtime_type"), "must not be empty".into()));
            }
            let mut arches = std::collections::BTreeSet::new();
            for (j, p) in shim.platforms.iter().enumerate() {
                let pkey = |k: &str| format!("shims[{i}].platforms[{j}].{k}");
                if !arches.insert(p.arch) {
                    return Err(invalid(pkey("arch"), format!("{} is listed twice", p.arch)));
                }
                if let Some(d) = &p.sha256 {
                    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(
                            pkey("sha256"),
                            format!("expected 64 hex digits, found {d:?}"),
                        ));
                    }
                }
                if url::Url::parse(&p.url).is_err() {
                    return Err(invalid(pkey("url"), format!("not a URL: {:?}", p.url)));
                }
            }
        }
        Ok(())
    }

    pub fn shim(&self, name: &str) -> Option<&Shim> {
        self.shims.iter().find(|s| s.name == name)
    }

    /// The shims named on the command line (all of them when none is named); unknown names are errors.
    pub fn select(&self, names: &[String]) -> anyhow::Result<Vec<&Shim>> {
        if names.is_empty() {
            return Ok(self.shims.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.shim(n).ok_or_else(|| {
                    let known: Vec<_> = self.shims.iter().map(|s| s.name.as_str()).collect();
                    anyhow::anyhow!(
                        "unknown shim {n:?}; the settings define: {}",
                        known.join(", ")
                    )
                })
            })
            .collect()
    }
}

fn is_handler_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Settings, SettingsError> {
        Settings::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.host.root, PathBuf::from("/host"));
        assert_eq!(s.host.install_dir, PathBuf::from("/opt/kwasm"));
        assert_eq!(s.trigger.annotation, "kwasm.sh/kwasm-node");
        assert_eq!(s.artifacts.max_size, ByteSize::mib(512));
        assert_eq!(s.containerd.restart, RestartMethod::Systemd);
        assert_eq!(s.containerd.timeout, Duration::from_secs(30));
    }

    #[test]
    fn design_example_parses() {
        let s = parse(
            r#"
[host]
root = "/host"
install_dir = "/opt/kwasm"
[trigger]
annotation = "kwasm.sh/kwasm-node"
label = "kwasm.sh/kwasm-node"
[agent]
listen = "0.0.0.0:9101"
[artifacts]
allow_http = false
allow_unverified = false
mirrors = { "https://github.com/" = "https://mirror.example.internal/github/" }
ca_bundle = ""
max_size = "512MiB"
[containerd]
config = "auto"
restart = ["/bin/sh", "-c", "kill -TERM 1"]
unit = "auto"
socket = "auto"
timeout = "30s"
[[shims]]
name = "spin"
runtime_type = "io.containerd.spin.v2"
binary = "containerd-shim-spin-v2"
version = "v0.23.0"
options = { SystemdCgroup = true }
  [[shims.platforms]]
  arch = "x86_64"
  url = "https://github.com/spinframework/containerd-shim-spin/releases/download/v0.23.0/containerd-shim-spin-v2-linux-x86_64.tar.gz"
  sha256 = "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281"
"#,
        )
        .unwrap();
        assert_eq!(s.shims[0].platforms[0].arch, Arch::Amd64);
        assert!(s.shims[0].platform(Arch::Arm64).is_none());
        assert_eq!(
            s.containerd.restart,
            RestartMethod::Argv(vec!["/bin/sh".into(), "-c".into(), "kill -TERM 1".into()])
        );
    }

    #[test]
    fn unknown_key_is_named_with_file_and_position() {
        let e = parse("[artifacts]\nallow_htp = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml"), "{e}");
        assert!(e.contains("allow_htp"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_digest_names_the_key() {
        let e = parse(
            "[[shims]]\nname='a'\nruntime_type='io.containerd.a.v2'\nbinary='a'\nversion='1'\n[[shims.platforms]]\narch='amd64'\nurl='https://x/a'\nsha256='abc'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shims[0].platforms[0].sha256"), "{e}");
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn bad_restart_and_arch_are_refused() {
        let e = parse("[containerd]\nrestart = 'reboot'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reboot"), "{e}");
        let e = parse(
            "[[shims]]\nname='a'\nruntime_type='t'\nbinary='a'\nversion='1'\n[[shims.platforms]]\narch='mips'\nurl='https://x/a'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mips"), "{e}");
    }

    #[test]
    fn bad_durations_and_sizes_are_refused() {
        assert!(parse("[containerd]\ntimeout = 'soon'\n").is_err());
        assert!(parse("[artifacts]\nmax_size = 'big'\n").is_err());
    }

    #[test]
    fn binary_must_be_a_plain_name() {
        let e = parse("[[shims]]\nname='a'\nruntime_type='t'\nbinary='../x'\nversion='1'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shims[0].binary"), "{e}");
    }
}
