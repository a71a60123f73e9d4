//! The command line contract (see the README): `run`, `apply`, `remove`, `plan`, `status`. What each
//! command does is in `commands`; how its result is printed, in `output`.

pub mod commands;
mod output;

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
    Run(Common),
    /// Provision once: install the shims and configure containerd.
    Apply(Target),
    /// Undo exactly what apply did.
    Remove(Target),
    /// Print what apply would change; changes nothing.
    Plan(Target),
    /// Installed shims, config entries, containerd health.
    Status(StatusArgs),
    /// Validate a settings file without touching a host: what it would install is installable.
    Check(CheckArgs),
    /// Cluster-wide, before the agents go (the chart's pre-delete hook): ask every provisioned node's
    /// agent to undo everything, and wait until each reports it is clean.
    Uninstall(UninstallArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
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
    /// Settings file (TOML): which trigger keys ask for shims.
    #[arg(
        long,
        env = "KWASM_CONFIG",
        default_value = "/etc/kwasm-agent/config.toml"
    )]
    pub config: PathBuf,
    /// How long to wait for every node to report its shims removed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Settings file (TOML).
    #[arg(
        long,
        env = "KWASM_CONFIG",
        default_value = "/etc/kwasm-agent/config.toml"
    )]
    pub config: PathBuf,
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
    pub common: Common,
    /// Only these shims (repeat or comma-separate); default: every shim in the settings.
    #[arg(long = "shim", value_delimiter = ',')]
    pub shims: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}
