//! The command line contract (docs/commands.md): `run`, `apply`, `remove`, `plan`, `status`, `check`,
//! `uninstall`, `pin`, `catalog`, `import-shim`. What each command does is in `commands` (`pin` in its own module); how its
//! result is printed, in `output`.

pub mod commands;
mod import;
mod output;
mod pin;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::arch::Arch;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "kwasm-agent",
    version,
    about = "Installs verified WebAssembly containerd shims on a node, and undoes it exactly"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KWASM_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// DaemonSet mode: watch this node (NODE_NAME) and reconcile; serve /healthz /readyz /metrics.
    Run(HostArgs),
    /// Provision once: install the shims and configure containerd.
    Apply(Target),
    /// Undo exactly what apply did.
    Remove(Target),
    /// Print what apply would change; changes nothing.
    Plan(Target),
    /// Installed shims, config entries, containerd health.
    Status(StatusArgs),
    /// Validate a settings file without touching a host: what it would install is installable.
    Check(SettingsArg),
    /// Cluster-wide, before the agents go (the chart's pre-delete hook): ask every provisioned node's
    /// agent to undo everything, and wait until each reports it is clean.
    Uninstall(UninstallArgs),
    /// Download a shim release, check its signature when asked, and print its catalog entry with the
    /// digest (settings TOML and Helm values).
    Pin(PinArgs),
    /// Cluster-wide, one active replica: keep a RuntimeClass per Shim object and write each Shim's
    /// status from the nodes (the chart's catalog Deployment).
    Catalog(SettingsArg),
    /// Print runtime-class-manager's Shim manifests (runtime.spinkube.dev/v1alpha1) as kwasm.sh Shim
    /// objects, for `kubectl apply -f -`; refuses what cannot be honoured, and prints nothing then.
    ImportShim(ImportShimArgs),
}

#[derive(Debug, Args)]
pub struct ImportShimArgs {
    /// Manifest files (YAML, several documents each); - reads standard input.
    #[arg(required = true)]
    pub files: Vec<String>,
    /// Accept platforms without a sha256 (the agents must allow unverified downloads too).
    #[arg(long)]
    pub allow_unverified: bool,
    /// The shim's version, when the release URLs do not name one (…/download/<version>/…).
    #[arg(long)]
    pub version: Option<String>,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The release archive (https, or http with --allow-http, or file://).
    pub url: String,
    /// The binary in the archive; default: its one containerd-shim-* file.
    #[arg(long)]
    pub binary: Option<String>,
    /// The platform's architecture; default: read from the URL's file name.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Keyless: the signer's identity (certificate URI or email SAN), exactly.
    #[arg(long, conflicts_with = "identity_regexp")]
    pub identity: Option<String>,
    /// Keyless: a regular expression the signer's identity must match.
    #[arg(long)]
    pub identity_regexp: Option<String>,
    /// Keyless: the OIDC issuer in the certificate, e.g. https://token.actions.githubusercontent.com.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Keyless: PEM bundle of trusted roots and intermediates; default: Sigstore's public-good Fulcio.
    #[arg(long)]
    pub trust_root: Option<PathBuf>,
    /// Key-based instead of keyless: the signer's PEM public key (cosign.pub).
    #[arg(long, conflicts_with_all = ["identity", "identity_regexp", "issuer", "trust_root", "certificate"])]
    pub public_key: Option<PathBuf>,
    /// The signature's archive member; default: <binary>.sig.
    #[arg(long)]
    pub signature: Option<String>,
    /// The certificate's archive member; default: <binary>.pem.
    #[arg(long)]
    pub certificate: Option<String>,
    /// Allow a plain-http URL (labs only).
    #[arg(long)]
    pub allow_http: bool,
    /// Extra PEM bundle trusted for HTTPS.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
}

impl PinArgs {
    /// The signature requirement the flags ask for; None: no flag about signatures was given.
    pub fn verify(&self) -> Option<crate::settings::Verify> {
        let v = crate::settings::Verify {
            identity: self.identity.clone(),
            identity_regexp: self.identity_regexp.clone(),
            issuer: self.issuer.clone(),
            signature: self.signature.clone(),
            certificate: self.certificate.clone(),
            trust_root: self.trust_root.clone(),
            public_key: self.public_key.clone(),
        };
        (v != crate::settings::Verify::default()).then_some(v)
    }
}

/// `--config`: the settings file every command reads.
#[derive(Debug, Args)]
pub struct SettingsArg {
    /// Settings file (TOML).
    #[arg(
        long,
        env = "KWASM_CONFIG",
        default_value = "/etc/kwasm-agent/config.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub settings: SettingsArg,
    /// How long to wait for every node to report its shims removed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// The settings and the host they act on: what every command that touches a host takes.
#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub settings: SettingsArg,
    /// Where the host's filesystem is seen (overrides host.root).
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    /// Node architecture (default: this machine's), Kubernetes names; x86_64/aarch64 accepted.
    #[arg(long)]
    pub arch: Option<Arch>,
}

#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub host: HostArgs,
    /// Only these shims (repeat or comma-separate); default: every shim in the settings.
    #[arg(long = "shim", value_delimiter = ',')]
    pub shims: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}
