//! Carrying out a config edit as one transaction: write it, restart containerd when needed, prove the
//! CRI plugin lists every handler with its binary, and when containerd does not come back healthy,
//! put the previous config back, restart again, and report the original cause.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::anyhow;

use super::cri::{self, CriStatus};
use super::edit::ConfigEdit;
use super::gate::RestartGate;
use super::ownership::ConfigOwnership;
use super::restart::{self, Action};
use super::Containerd;
use crate::timeline::mark;

/// What happened to containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// Restarted, and the CRI plugin proved to list the handlers (how it was restarted).
    Restarted(String),
    /// The config changed but containerd was not restarted (why); the handlers load at its next start.
    Deferred(String),
    /// Nothing needed a restart (why).
    NotNeeded(String),
}

impl std::fmt::Display for Restart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restart::Restarted(how) => write!(f, "restarted ({how})"),
            Restart::Deferred(why) | Restart::NotNeeded(why) => write!(f, "not restarted: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub changed_files: Vec<PathBuf>,
    pub restart: Restart,
    /// Handlers containerd reported loaded after the change (None: not asked).
    pub loaded: Option<Vec<String>>,
}

impl Containerd {
    /// Carry out `edit`. `record` persists the ownership the host now has: called after the files are
    /// written (so a crash after it finds the record), and with the previous ownership on rollback.
    /// `removing` are handlers that must be gone from the CRI plugin afterwards. When containerd must
    /// restart, the config is validated and written first and only then `gate` entered (a restart slot
    /// is held for the restart alone); it is left once containerd proved itself or was rolled back.
    pub async fn carry_out(
        &self,
        edit: &ConfigEdit,
        previous: Option<&ConfigOwnership>,
        removing: &[String],
        record: &mut dyn FnMut(Option<&ConfigOwnership>) -> anyhow::Result<()>,
        gate: &dyn RestartGate,
    ) -> anyhow::Result<Outcome> {
        let expected = expected_handlers(edit);
        let changed_files: Vec<PathBuf> = edit.writes.iter().map(|w| w.path.clone()).collect();
        let action = self.restart_action(edit, &expected).await;
        let reloads = self.flavor.kind.reloads_itself() && edit.changes();
        if let Action::Skip(reason) = &action {
            if !reloads {
                self.write_and_record(edit, previous, record).await?;
                let restart = if edit.changes() {
                    tracing::warn!(reason = %reason, "config changed but containerd was not restarted; the handlers load at its next start");
                    Restart::Deferred(reason.clone())
                } else {
                    Restart::NotNeeded(reason.clone())
                };
                return Ok(Outcome {
                    changed_files,
                    restart,
                    loaded: None,
                });
            }
        }
        // Everything that can happen before the restart does: nothing but the restart and its proof
        // is on the path where CRI is down, or inside a restart permit.
        let made = self.write_and_record(edit, previous, record).await?;
        mark("write");
        let permit = match gate.enter().await {
            Ok(p) => p,
            Err(e) => return Err(self.abort(edit, &made, e, previous, record, None).await),
        };
        mark("restart-permit");
        tracing::info!(action = ?action, "restarting containerd");
        let result = match self.restart_and_prove(&action, &expected, removing).await {
            Ok(st) => Ok(st),
            Err(err) => Err(self
                .abort(edit, &made, err, previous, record, Some(&action))
                .await),
        };
        permit.release().await;
        let st = result?;
        let loaded: Vec<String> = expected
            .keys()
            .filter(|h| st.handlers.contains_key(*h))
            .cloned()
            .collect();
        tracing::info!(handlers = ?loaded, "containerd is back and its CRI plugin lists the handlers");
        if edit.ownership.is_none() {
            self.drop_backups(edit);
        }
        Ok(Outcome {
            changed_files,
            restart: restart_done(action),
            loaded: Some(loaded),
        })
    }

    /// Put the previous config (and ownership record) back, restart containerd again when it was
    /// restarted, and return `cause` — with every cleanup failure attached, never in its place.
    async fn abort(
        &self,
        edit: &ConfigEdit,
        made: &BTreeSet<PathBuf>,
        cause: anyhow::Error,
        previous: Option<&ConfigOwnership>,
        record: &mut dyn FnMut(Option<&ConfigOwnership>) -> anyhow::Result<()>,
        restarted: Option<&Action>,
    ) -> anyhow::Error {
        let mut problems = Vec::new();
        if let Err(e) = self.restore(&edit.writes, made) {
            problems.push(format!("restoring the previous config failed: {e:#}"));
        }
        if let Err(e) = record(previous) {
            problems.push(format!(
                "recording the rollback in the state file failed: {e:#}"
            ));
        }
        let Some(action) = restarted else {
            return with_problems(cause, "the previous config was restored", problems);
        };
        tracing::warn!("previous containerd config restored; restarting containerd again");
        let healthy = async {
            self.restarter().run(action).await?;
            cri::wait_for(
                &self.socket()?,
                &BTreeMap::new(),
                &[],
                self.settings.timeout,
            )
            .await
        }
        .await;
        if let Err(e) = healthy {
            problems.push(format!(
                "containerd is not healthy even with the previous config: {e:#}"
            ));
        }
        with_problems(
            cause,
            "containerd did not come back healthy with the new config; the previous config was restored and containerd restarted",
            problems,
        )
    }

    /// Whether and how to restart: when the config changes, or when it does not but a handler it
    /// names is not loaded (written by a run that did not get to restart).
    async fn restart_action(
        &self,
        edit: &ConfigEdit,
        expected: &BTreeMap<String, PathBuf>,
    ) -> Action {
        let loaded = if edit.changes() {
            None
        } else {
            let st = self.cri_status().await.ok();
            mark("cri-check");
            st.map(|st| expected.iter().all(|(h, p)| st.lists(h, p)))
        };
        restart::decide(
            &self.settings.restart,
            self.flavor.kind,
            &self.flavor.unit,
            edit.changes(),
            loaded,
        )
    }

    /// Write the edit and record the ownership it leaves; a record that cannot be saved undoes the
    /// write. Returns the directories the write made.
    async fn write_and_record(
        &self,
        edit: &ConfigEdit,
        previous: Option<&ConfigOwnership>,
        record: &mut dyn FnMut(Option<&ConfigOwnership>) -> anyhow::Result<()>,
    ) -> anyhow::Result<BTreeSet<PathBuf>> {
        let made = self.write_all(edit, previous).await?;
        let owned = self.settle_dirs(edit, previous, &made);
        if let Err(e) = record(owned.as_ref()) {
            return Err(self.abort(edit, &made, e, previous, record, None).await);
        }
        Ok(made)
    }

    /// The ownership to record after a write: the edit's, with the directories the agent made for its
    /// files (now or before) that still hold something; those left empty are removed.
    fn settle_dirs(
        &self,
        edit: &ConfigEdit,
        previous: Option<&ConfigOwnership>,
        made: &BTreeSet<PathBuf>,
    ) -> Option<ConfigOwnership> {
        let mut dirs: BTreeSet<PathBuf> =
            previous.map(|p| p.created_dirs.clone()).unwrap_or_default();
        dirs.extend(made.iter().cloned());
        let kept = self.prune_dirs(&dirs);
        edit.ownership.clone().map(|mut o| {
            o.created_dirs = kept;
            o
        })
    }

    async fn restart_and_prove(
        &self,
        action: &Action,
        expected: &BTreeMap<String, PathBuf>,
        absent: &[String],
    ) -> anyhow::Result<CriStatus> {
        let restarter = self.restarter();
        restarter.run(action).await?;
        mark("restart");
        let res = cri::wait_for(&self.socket()?, expected, absent, self.settings.timeout).await;
        mark("cri-wait");
        match res {
            Ok(st) => Ok(st),
            Err(e) => Err(anyhow!("{e:#}{}", restarter.journal_tail(action).await)),
        }
    }
}

/// What a restart that proved itself says it did.
fn restart_done(action: Action) -> Restart {
    match action {
        Action::Skip(why) => Restart::NotNeeded(why),
        Action::Systemd { unit } => Restart::Restarted(format!("systemctl restart {unit}")),
        Action::Dbus { unit } => Restart::Restarted(format!("RestartUnit {unit} over D-Bus")),
        Action::Argv(v) => Restart::Restarted(v.join(" ")),
    }
}

/// Each handler the edit leaves configured, with the binary the CRI plugin must list for it.
fn expected_handlers(edit: &ConfigEdit) -> BTreeMap<String, PathBuf> {
    edit.ownership
        .as_ref()
        .map(|o| {
            o.handlers
                .iter()
                .map(|(h, r)| (h.clone(), r.runtime_path.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `cause`, said with what was done about it and anything that went wrong doing it.
fn with_problems(cause: anyhow::Error, done: &str, problems: Vec<String>) -> anyhow::Error {
    if problems.is_empty() {
        cause.context(done.to_owned())
    } else {
        cause.context(format!(
            "{done}, but the rollback did not finish: {}",
            problems.join("; ")
        ))
    }
}
