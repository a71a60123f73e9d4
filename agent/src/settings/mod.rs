//! The settings file (TOML). The Helm chart renders it into a ConfigMap; `kwasm-agent apply --config`
//! reads it on a bare host. Every key has a default so an empty file is valid; unknown keys are errors
//! so a typo never silently falls back to a default; every value is checked (`validate`) before
//! anything runs, so no setting can reach arithmetic or I/O it would break.

mod auto;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};

use crate::arch::Arch;
pub use auto::Auto;

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
    /// `run` only; absent: containerd restarts are not paced across the cluster.
    pub fleet: Option<FleetSettings>,
    pub catalog: CatalogSettings,
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
    /// A taint key nodes may be created with (e.g. on an AKS node pool) to keep pods off them until
    /// every requested shim is proven loaded; the agent removes it then. "": none.
    pub startup_taint: String,
}

impl Default for TriggerSettings {
    fn default() -> Self {
        Self {
            annotation: "kwasm.sh/kwasm-node".into(),
            label: "kwasm.sh/kwasm-node".into(),
            shims_annotation: "kwasm.sh/shims".into(),
            keep_on_untrigger: false,
            startup_taint: "kwasm.sh/provisioning".into(),
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
    /// A connection to the API server that sends nothing for this long is taken for dead and its
    /// request (a watch too: the server sends a bookmark every minute) made again. Every command's.
    #[serde(with = "humantime_serde")]
    pub api_read_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9101".into(),
            resync: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
            api_read_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactSettings {
    pub allow_http: bool,
    pub allow_unverified: bool,
    /// A platform without sha256 is accepted when its shim has `verify`: the signature then stands
    /// in for the pin (who built it, not which build). Default false: both are required.
    pub allow_unpinned_if_signed: bool,
    /// URL prefix rewrites; the longest matching prefix wins.
    pub mirrors: BTreeMap<String, String>,
    /// Extra PEM bundle (host path, resolved under the host root) trusted for HTTPS; `""`: none.
    #[serde(deserialize_with = "auto::empty_is_none")]
    pub ca_bundle: Option<PathBuf>,
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
            allow_unpinned_if_signed: false,
            mirrors: BTreeMap::new(),
            ca_bundle: None,
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
    /// `systemctl restart`, run in the host's namespaces (needs hostPID and privileges in a pod).
    Systemd,
    /// `RestartUnit` on the host's systemd over D-Bus: no host PID namespace, no privileges.
    Dbus,
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
            Raw::Name(n) if n == "dbus" => Ok(Self::Dbus),
            Raw::Name(n) if n == "none" => Ok(Self::None),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "expected \"systemd\", \"dbus\", \"none\" or an argv array, found \"{n}\""
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
    /// The config file to change (host path); `auto`: the flavor's.
    pub config: Auto<PathBuf>,
    pub restart: RestartMethod,
    /// The systemd unit to restart; `auto`: the flavor's.
    pub unit: Auto<String>,
    /// containerd's socket (host path); `auto`: the flavor's.
    pub socket: Auto<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The containerd binary used to validate a candidate config (host path); `auto`: look on the host.
    pub binary: Auto<PathBuf>,
    /// A host directory on containerd's PATH (e.g. /usr/local/bin) where each shim is also linked
    /// under the name its runtime_type maps to, for clients that name the runtime rather than the
    /// handler (`ctr run --runtime io.containerd.wasmtime.v1`, nerdctl). None: no links.
    pub link_dir: Option<PathBuf>,
    /// How `remove` tells whether a shim still runs containers.
    pub in_use: InUseCheck,
}

/// Where the answer to "does a container still run on this shim?" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InUseCheck {
    /// The host's processes when the agent sees them (host root `/`, or a pod with hostPID), else
    /// containerd's API.
    #[default]
    Auto,
    /// The host's process table: the shim processes executing the binary.
    Processes,
    /// containerd's API: containers of the shim's runtime with a live task, in every namespace.
    Containerd,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self {
            config: Auto::Detect,
            restart: RestartMethod::Systemd,
            unit: Auto::Detect,
            socket: Auto::Detect,
            timeout: Duration::from_secs(30),
            binary: Auto::Detect,
            link_dir: None,
            in_use: InUseCheck::Auto,
        }
    }
}

/// Cluster-wide pacing of containerd restarts: at most `max_concurrent_restarts` nodes restart at once,
/// each holding one of that many Leases while it does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSettings {
    pub max_concurrent_restarts: Concurrency,
    /// Where the Leases live; None: the agent's own namespace (`POD_NAMESPACE`).
    pub lease_namespace: Option<String>,
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            max_concurrent_restarts: Concurrency::Count(2),
            lease_namespace: None,
            lease_duration: Duration::from_secs(60),
        }
    }
}

/// The cluster's catalog as `Shim` objects (`shims.kwasm.sh`): whether agents follow them, and how the
/// catalog controller (`kwasm-agent catalog`) elects its leader and paces its status writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// `run`: add the cluster's Shim objects to this file's `[[shims]]` (the file wins on a name).
    pub shim_objects: bool,
    /// `catalog`: where its leader Lease lives; None: its own namespace (`POD_NAMESPACE`).
    pub lease_namespace: Option<String>,
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// `catalog`: node changes within this long are folded into one status write per Shim.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// `catalog`: where it serves /healthz and /readyz ("": not served).
    pub listen: String,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self {
            shim_objects: false,
            lease_namespace: None,
            lease_duration: Duration::from_secs(15),
            status_interval: Duration::from_secs(1),
            listen: String::new(),
        }
    }
}

/// A number of nodes, or a percentage of the nodes that ask for shims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Concurrency {
    Count(u32),
    Percent(f64),
}

impl Concurrency {
    /// How many at once among `asking` nodes: at least one.
    pub fn of(self, asking: usize) -> u32 {
        match self {
            Concurrency::Count(n) => n.max(1),
            Concurrency::Percent(p) => {
                let n = (asking as f64 * p / 100.0).ceil();
                if n.is_finite() && n >= 1.0 {
                    n.min(f64::from(u32::MAX)) as u32
                } else {
                    1
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "expected a number of nodes (1 or more) or a percentage such as \"10%\", found {what}"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) if (1..=100_000).contains(&n) => Ok(Self::Count(n as u32)),
            Raw::Count(n) => Err(bad(n.to_string())),
            Raw::Text(t) => match t.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Self::Percent(p)),
                _ => Err(bad(format!("{t:?}"))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// Who must have signed the binary; None: the SHA-256 pin alone.
    #[serde(default)]
    pub verify: Option<Verify>,
}

/// A cosign signature over the unpacked binary, carried in the archive beside it: keyless (a Fulcio
/// certificate naming who signed, chained to `trust_root`) or with a public key.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// The certificate's identity (URI or email SAN), exactly.
    pub identity: Option<String>,
    /// Or a regular expression the identity must match (unanchored unless written with ^ and $).
    pub identity_regexp: Option<String>,
    /// The certificate's OIDC issuer (Fulcio extension), exactly.
    pub issuer: Option<String>,
    /// Archive member holding the base64 signature; None: "<binary>.sig".
    pub signature: Option<String>,
    /// Archive member holding the certificate (PEM, or base64 of PEM); None: "<binary>.pem".
    pub certificate: Option<String>,
    /// PEM bundle of roots and intermediates (host path); None: Sigstore's public-good Fulcio chain.
    pub trust_root: Option<PathBuf>,
    /// A PEM public key (host path) for key-based signatures, instead of a certificate.
    pub public_key: Option<PathBuf>,
}

impl Verify {
    pub fn signature_member(&self, binary: &str) -> String {
        self.signature
            .clone()
            .unwrap_or_else(|| format!("{binary}.sig"))
    }

    /// None for key-based verification: no certificate is read.
    pub fn certificate_member(&self, binary: &str) -> Option<String> {
        match self.public_key {
            Some(_) => None,
            None => Some(
                self.certificate
                    .clone()
                    .unwrap_or_else(|| format!("{binary}.pem")),
            ),
        }
    }

    /// The checks the settings file gets, for a requirement built elsewhere (`pin`'s flags): the
    /// offending field and why.
    pub fn check(&self, binary: &str) -> Result<(), (String, String)> {
        validate::verify(&|k: &str| k.to_owned(), self, binary)
            .map_err(|(k, m)| (k.trim_start_matches("verify.").to_owned(), m))
    }

    /// One line naming what is required, recorded with the install: a binary installed under another
    /// requirement (or none) is verified again when the requirement changes.
    pub fn requirement(&self) -> String {
        match &self.public_key {
            Some(k) => format!("signed with the key in {}", k.display()),
            None => {
                let who = match (&self.identity, &self.identity_regexp) {
                    (Some(i), _) => format!("identity {i}"),
                    (None, Some(r)) => format!("identity matching /{r}/"),
                    (None, None) => "any identity".to_owned(),
                };
                format!(
                    "signed by {who}, issuer {}, chained to {}",
                    self.issuer.as_deref().unwrap_or("?"),
                    self.trust_root
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "Sigstore's public-good Fulcio".to_owned())
                )
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
        validate::check(&settings).map_err(|(key, message)| SettingsError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        })?;
        Ok(settings)
    }

    /// The checks a settings file's `[[shims]]` entry gets, for one from elsewhere (a Shim object):
    /// the offending key below the entry, and why.
    pub fn check_shim(&self, shim: &Shim) -> Result<(), (String, String)> {
        let alone = Settings {
            shims: vec![shim.clone()],
            ..self.clone()
        };
        validate::check(&alone).map_err(|(k, m)| {
            let k = k.strip_prefix("shims[0].").unwrap_or(&k).to_owned();
            (k, m)
        })
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

    #[rstest::rstest]
    #[case::zero_timeout("[containerd]\ntimeout = '0s'\n", "containerd.timeout")]
    #[case::timeout_beyond_any_clock(
        "[containerd]\ntimeout = '18446744073709551615s'\n",
        "containerd.timeout"
    )]
    #[case::zero_resync("[agent]\nresync = '0s'\n", "agent.resync")]
    #[case::backoff_of_years("[agent]\nmax_backoff = '1000d'\n", "agent.max_backoff")]
    #[case::zero_read_timeout("[artifacts]\nread_timeout = '0s'\n", "artifacts.read_timeout")]
    #[case::no_attempts("[artifacts]\nattempts = 0\n", "artifacts.attempts")]
    #[case::attempts_beyond_reason("[artifacts]\nattempts = 4294967295\n", "artifacts.attempts")]
    #[case::zero_max_size("[artifacts]\nmax_size = '0B'\n", "artifacts.max_size")]
    #[case::petabyte_max_size("[artifacts]\nmax_size = '1PiB'\n", "artifacts.max_size")]
    fn durations_sizes_and_counts_must_be_in_range(#[case] toml: &str, #[case] key: &str) {
        let e = parse(toml).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("expected"), "{toml}: {e}");
    }

    #[test]
    fn numbers_toml_cannot_hold_are_parse_errors_not_panics() {
        assert!(parse("[artifacts]\nattempts = 99999999999999999999\n").is_err());
        assert!(parse("[containerd]\ntimeout = '999999999999999999999999s'\n").is_err());
    }

    #[test]
    fn names_must_be_what_kubernetes_accepts() {
        let shim = |name: &str| {
            format!("[[shims]]\nname='{name}'\nruntime_type='io.containerd.x.v2'\nbinary='x'\nversion='1'\n")
        };
        for bad in ["spin.v2", "Spin", "-spin", "spin_v2", "", &"a".repeat(51)] {
            let e = parse(&shim(bad)).unwrap_err().to_string();
            assert!(
                e.contains("shims[0].name") && e.contains("DNS label"),
                "{bad}: {e}"
            );
        }
        assert!(parse(&shim("wasmtime-v1")).is_ok());
        let e = parse("[trigger]\nlabel = 'kwasm.sh/has space'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trigger.label"), "{e}");
        let e = parse("[agent]\nlisten = '9101'\n").unwrap_err().to_string();
        assert!(e.contains("agent.listen"), "{e}");
        assert!(parse("[agent]\nlisten = '[::]:9101'\n").is_ok());
    }

    #[test]
    fn auto_and_empty_values_are_typed() {
        let s = parse(
            "[containerd]\nconfig = '/etc/c.toml'\nunit = 'auto'\n[artifacts]\nca_bundle = ''\n",
        )
        .unwrap();
        assert_eq!(
            s.containerd.config,
            Auto::Given(PathBuf::from("/etc/c.toml"))
        );
        assert_eq!(s.containerd.unit, Auto::Detect);
        assert_eq!(s.artifacts.ca_bundle, None);
        let e = parse("[containerd]\nconfig = 'etc/c.toml'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("containerd.config") && e.contains("absolute"),
            "{e}"
        );
    }

    #[test]
    fn fleet_pacing_is_a_count_or_a_percentage() {
        assert!(parse("").unwrap().fleet.is_none(), "absent: unpaced");
        let f = parse("[fleet]\n").unwrap().fleet.unwrap();
        assert_eq!(f.max_concurrent_restarts, Concurrency::Count(2));
        assert_eq!(f.lease_duration, Duration::from_secs(60));
        let f = parse("[fleet]\nmax_concurrent_restarts = \"10%\"\nlease_namespace = \"kwasm\"\n")
            .unwrap()
            .fleet
            .unwrap();
        assert_eq!(f.max_concurrent_restarts.of(45), 5);
        assert_eq!(f.max_concurrent_restarts.of(0), 1);
        assert_eq!(Concurrency::Count(3).of(1), 3);
        for bad in [
            "0", "-1", "\"0%\"", "\"101%\"", "\"ten\"", "\"NaN%\"", "1.5",
        ] {
            let e = parse(&format!("[fleet]\nmax_concurrent_restarts = {bad}\n"));
            assert!(e.is_err(), "{bad}");
        }
        let e = parse("[fleet]\nlease_duration = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fleet.lease_duration"), "{e}");
    }

    #[test]
    fn binary_must_be_a_plain_name() {
        let e = parse("[[shims]]\nname='a'\nruntime_type='t'\nbinary='../x'\nversion='1'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shims[0].binary"), "{e}");
    }
}
