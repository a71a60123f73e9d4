//! Restarting containerd: when (only if the config changed, or a handler it should have is not
//! loaded), and how (a systemd unit through `systemctl` as the host or over D-Bus, a command, or not
//! at all). The decisions are pure functions, unit-tested here; both systemd paths run for real in
//! tests/tests/systemd_nodes.rs.

use std::time::Duration;

use anyhow::{anyhow, bail};

use super::flavor::Kind;
use crate::host::exec::HostExec;
use crate::host::systemd::{Systemd, Unit};
use crate::host::HostRoot;
use crate::settings::RestartMethod;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Skip(String),
    Systemd { unit: String },
    Dbus { unit: String },
    Argv(Vec<String>),
}

/// What restarting needs of the host: its commands (systemctl, an argv) or its systemd's D-Bus
/// socket under the host root, and the other units the flavor may run as when the unit was not
/// found by its file (a restricted pod does not see /etc/systemd).
pub struct Restarter<'a> {
    pub exec: &'a HostExec,
    pub host: &'a HostRoot,
    pub alternatives: &'a [String],
    pub timeout: Duration,
}

/// `loaded`: whether containerd's CRI plugin already lists every configured handler (None when it
/// could not be asked).
pub fn decide(
    method: &RestartMethod,
    kind: Kind,
    unit: &str,
    config_changed: bool,
    loaded: Option<bool>,
) -> Action {
    if kind.reloads_itself() {
        return Action::Skip(format!(
            "{} reloads its containerd drop-ins itself",
            kind.name()
        ));
    }
    if !config_changed {
        match loaded {
            Some(true) => {
                return Action::Skip("config unchanged and every handler is loaded".into())
            }
            None => return Action::Skip("config unchanged".into()),
            // Written by an earlier run that did not get to restart (killed, or restart = none then).
            Some(false) => {}
        }
    }
    match method {
        RestartMethod::None => Action::Skip("containerd.restart = \"none\"".into()),
        RestartMethod::Systemd => Action::Systemd {
            unit: unit.to_owned(),
        },
        RestartMethod::Dbus => Action::Dbus {
            unit: unit.to_owned(),
        },
        RestartMethod::Argv(a) => Action::Argv(a.clone()),
    }
}

/// `systemctl show --property=KillMode`'s answer, checked.
pub fn check_kill_mode(unit: &str, systemctl_show: &str) -> anyhow::Result<()> {
    let mode = systemctl_show
        .lines()
        .find_map(|l| l.trim().strip_prefix("KillMode="))
        .map(str::trim)
        .ok_or_else(|| anyhow!("systemctl did not report KillMode for {unit}"))?;
    refuse_kill_mode(unit, mode)
}

/// A unit without `KillMode=process` kills every container's shim on restart: refuse it.
pub fn refuse_kill_mode(unit: &str, mode: &str) -> anyhow::Result<()> {
    if mode != "process" {
        bail!(
            "unit {unit} has KillMode={mode}: restarting it would kill every running container; set KillMode=process (the upstream containerd.service does) or use containerd.restart = \"none\""
        );
    }
    Ok(())
}

pub fn systemd_argv(unit: &str) -> [Vec<String>; 2] {
    [
        vec![
            "systemctl".into(),
            "show".into(),
            "--property=KillMode".into(),
            unit.into(),
        ],
        vec!["systemctl".into(), "restart".into(), unit.into()],
    ]
}

impl Restarter<'_> {
    /// Refuses a unit whose restart would kill containers. Asked before anything is written, and
    /// again right before the restart (a unit may have changed in between).
    pub async fn check(&self, method: &RestartMethod, unit: &str) -> anyhow::Result<()> {
        match method {
            RestartMethod::Systemd => {
                let [show, _] = systemd_argv(unit);
                let out = self.exec.run(&show, self.timeout).await?;
                if !out.success {
                    bail!("systemctl show {unit} failed: {}", out.tail(3));
                }
                check_kill_mode(unit, &out.stdout)
            }
            RestartMethod::Dbus => {
                let bus = Systemd::connect(self.host).await?;
                self.dbus_unit(&bus, unit).await.map(drop)
            }
            RestartMethod::None | RestartMethod::Argv(_) => Ok(()),
        }
    }

    /// Carry out the restart; what the command or systemd said goes into the error when it fails.
    pub async fn run(&self, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::Skip(_) => Ok(()),
            Action::Systemd { unit } => {
                self.check(&RestartMethod::Systemd, unit).await?;
                systemctl_restart(self.exec, unit, self.timeout).await
            }
            Action::Dbus { unit } => self.dbus_restart(unit).await,
            Action::Argv(argv) => run_argv(self.exec, argv, self.timeout).await,
        }
    }

    /// containerd's own words after a failed start, where systemd keeps them ("" when there are
    /// none to be had).
    pub async fn journal_tail(&self, action: &Action) -> String {
        match action {
            Action::Systemd { unit } => journal_tail(self.exec, unit).await,
            Action::Dbus { unit } => {
                let Ok(bus) = Systemd::connect(self.host).await else {
                    return String::new();
                };
                match self.dbus_unit(&bus, unit).await {
                    Ok(u) => dbus_journal_tail(&bus, &u).await,
                    Err(_) => String::new(),
                }
            }
            _ => String::new(),
        }
    }

    /// The unit systemd has loaded under `unit` or, failing that, one of the flavor's other names
    /// for it; refused unless `KillMode=process`.
    async fn dbus_unit(&self, bus: &Systemd, unit: &str) -> anyhow::Result<Unit> {
        let mut found = bus.unit(unit).await;
        for alt in self.alternatives {
            if found.is_ok() {
                break;
            }
            if let Ok(u) = bus.unit(alt).await {
                found = Ok(u);
            }
        }
        let u = found?;
        let mode = bus.service_property(&u, "KillMode").await?;
        refuse_kill_mode(&u.name, &mode)?;
        Ok(u)
    }

    /// `RestartUnit` over D-Bus, its job's result, then the unit active. systemd's start rate limit
    /// is handled as for `systemctl` (reset, one more start).
    async fn dbus_restart(&self, unit: &str) -> anyhow::Result<()> {
        let bus = Systemd::connect(self.host).await?;
        let u = self.dbus_unit(&bus, unit).await?;
        if let Err(e) = bus.restart(&u, self.timeout).await {
            let result = bus.service_property(&u, "Result").await.unwrap_or_default();
            if result != "start-limit-hit" {
                bail!(
                    "{e:#} (Result={result}){}",
                    dbus_journal_tail(&bus, &u).await
                );
            }
            tracing::warn!(unit = %u.name, "systemd's start rate limit stopped the restart; resetting it and starting again");
            bus.reset_failed(&u).await?;
            if let Err(e) = bus.restart(&u, self.timeout).await {
                bail!(
                    "{e:#}, after resetting its start rate limit{}",
                    dbus_journal_tail(&bus, &u).await
                );
            }
        }
        let active = bus.unit_property(&u, "ActiveState").await?;
        if active != "active" {
            bail!(
                "{} is {active} after its restart{}",
                u.name,
                dbus_journal_tail(&bus, &u).await
            );
        }
        Ok(())
    }
}

async fn dbus_journal_tail(bus: &Systemd, unit: &Unit) -> String {
    match bus.journal(unit, 15).await {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                String::new()
            } else {
                format!(
                    "; journal: {}",
                    lines[lines.len().saturating_sub(5)..].join(" | ")
                )
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not read the unit's journal lines over D-Bus");
            String::new()
        }
    }
}

async fn run_argv(exec: &HostExec, argv: &[String], timeout: Duration) -> anyhow::Result<()> {
    let out = exec.run(argv, timeout).await?;
    if !out.success {
        bail!(
            "restart command `{}` exited with {:?}: {}",
            argv.join(" "),
            out.code,
            out.tail(5)
        );
    }
    Ok(())
}

/// `systemctl restart`. systemd refuses a start beyond the unit's rate limit (by default 5 starts in
/// 10 s: "start request repeated too quickly") *after* stopping containerd, which would leave the node
/// without it; a unit that hit its limit is reset and restarted once more.
async fn systemctl_restart(exec: &HostExec, unit: &str, timeout: Duration) -> anyhow::Result<()> {
    let [_, restart] = systemd_argv(unit);
    let out = exec.run(&restart, timeout).await?;
    if out.success {
        return Ok(());
    }
    if start_limit_hit(exec, unit, timeout).await {
        tracing::warn!(
            unit,
            "systemd's start rate limit stopped the restart; resetting it and starting again"
        );
        let reset: Vec<String> = vec!["systemctl".into(), "reset-failed".into(), unit.into()];
        exec.run(&reset, timeout).await?;
        let again = exec.run(&restart, timeout).await?;
        if again.success {
            return Ok(());
        }
        let journal = journal_tail(exec, unit).await;
        bail!(
            "systemctl restart {unit} failed after resetting its start rate limit: {}{journal}",
            again.tail(3)
        );
    }
    let journal = journal_tail(exec, unit).await;
    bail!("systemctl restart {unit} failed: {}{journal}", out.tail(3))
}

async fn start_limit_hit(exec: &HostExec, unit: &str, timeout: Duration) -> bool {
    let argv: Vec<String> = ["systemctl", "show", "--property=Result", unit]
        .iter()
        .map(|s| s.to_string())
        .collect();
    matches!(exec.run(&argv, timeout).await, Ok(o) if o.stdout.trim() == "Result=start-limit-hit")
}

/// containerd's own words after a failed start, from `journalctl` as the host.
async fn journal_tail(exec: &HostExec, unit: &str) -> String {
    let argv: Vec<String> = [
        "journalctl",
        "-u",
        unit,
        "-n",
        "15",
        "--no-pager",
        "-o",
        "cat",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match exec.run(&argv, Duration::from_secs(5)).await {
        Ok(o) if o.success && !o.stdout.trim().is_empty() => format!("; journal: {}", o.tail(5)),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_only_on_change_or_missing_handlers() {
        let m = RestartMethod::Systemd;
        assert_eq!(
            decide(&m, Kind::Containerd, "containerd", true, Some(true)),
            Action::Systemd {
                unit: "containerd".into()
            }
        );
        assert!(matches!(
            decide(&m, Kind::Containerd, "containerd", false, Some(true)),
            Action::Skip(_)
        ));
        assert!(matches!(
            decide(&m, Kind::Containerd, "containerd", false, None),
            Action::Skip(_)
        ));
        assert_eq!(
            decide(&m, Kind::K3s, "k3s", false, Some(false)),
            Action::Systemd { unit: "k3s".into() }
        );
        assert!(
            matches!(decide(&m, Kind::K0s, "k0sworker", true, None), Action::Skip(r) if r.contains("k0s"))
        );
        assert!(
            matches!(decide(&RestartMethod::None, Kind::Containerd, "c", true, None), Action::Skip(r) if r.contains("none"))
        );
        let argv = RestartMethod::Argv(vec!["/bin/restart".into()]);
        assert_eq!(
            decide(&argv, Kind::Containerd, "c", true, None),
            Action::Argv(vec!["/bin/restart".into()])
        );
    }

    #[test]
    fn refuses_units_that_would_kill_containers() {
        assert!(check_kill_mode("containerd", "KillMode=process\n").is_ok());
        let e = check_kill_mode("containerd", "KillMode=control-group\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("control-group") && e.contains("kill every running container"),
            "{e}"
        );
        assert!(check_kill_mode("containerd", "").is_err());
    }

    #[test]
    fn systemd_commands_name_the_unit() {
        let [show, restart] = systemd_argv("k3s-agent");
        assert_eq!(
            show,
            ["systemctl", "show", "--property=KillMode", "k3s-agent"]
        );
        assert_eq!(restart, ["systemctl", "restart", "k3s-agent"]);
    }
}
