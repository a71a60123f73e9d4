//! The host's systemd over D-Bus: unit properties, restarting a unit and waiting for its job, and the
//! unit's journal lines. A socket under the host root is all it needs — no host PID namespace, no
//! privileges — so the agent's pod can run restricted (`containerd.restart = "dbus"`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Connection, MatchRule, MessageStream};

use super::HostRoot;

/// The system bus (dbus-daemon or dbus-broker) first; systemd's own socket where there is no bus.
const SOCKETS: [(&str, bool); 2] = [
    ("/run/dbus/system_bus_socket", true),
    ("/run/systemd/private", false),
];

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
}

pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    /// Which socket answered (for messages).
    pub socket: PathBuf,
    /// systemd refuses a second `Subscribe` on one connection.
    subscribed: tokio::sync::OnceCell<()>,
}

/// A unit as systemd has it loaded.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    path: OwnedObjectPath,
}

impl Systemd {
    pub async fn connect(host: &HostRoot) -> anyhow::Result<Self> {
        let mut tried = Vec::new();
        for (socket, is_bus) in SOCKETS {
            let real = host.resolve(socket)?;
            if !real.exists() {
                tried.push(format!("{socket}: absent"));
                continue;
            }
            match connect_at(&real, is_bus).await {
                Ok(conn) => {
                    let manager = ManagerProxy::new(&conn).await?;
                    return Ok(Self {
                        conn,
                        manager,
                        socket: socket.into(),
                        subscribed: tokio::sync::OnceCell::new(),
                    });
                }
                Err(e) => tried.push(format!("{socket}: {e:#}")),
            }
        }
        bail!(
            "cannot reach the host's systemd over D-Bus under {} ({}); mount the host's /run/dbus (or /run/systemd) into the agent's pod",
            host.root().display(),
            tried.join("; ")
        )
    }

    /// The unit by name (`containerd` means `containerd.service`); an error when systemd has no such
    /// unit.
    pub async fn unit(&self, name: &str) -> anyhow::Result<Unit> {
        let name = full_name(name);
        let path = self
            .manager
            .load_unit(&name)
            .await
            .with_context(|| format!("asking systemd for {name}"))?;
        let unit = Unit { name, path };
        let load = self.unit_property(&unit, "LoadState").await?;
        if load != "loaded" {
            bail!("systemd has no unit {} (LoadState={load})", unit.name);
        }
        Ok(unit)
    }

    /// A string property of the unit's `Unit` interface (`ActiveState`, `LoadState`, …).
    pub async fn unit_property(&self, unit: &Unit, name: &str) -> anyhow::Result<String> {
        self.property(unit, "org.freedesktop.systemd1.Unit", name)
            .await
    }

    /// A string property of the unit's `Service` interface (`KillMode`, `Result`, …).
    pub async fn service_property(&self, unit: &Unit, name: &str) -> anyhow::Result<String> {
        self.property(unit, "org.freedesktop.systemd1.Service", name)
            .await
    }

    async fn property(&self, unit: &Unit, iface: &str, name: &str) -> anyhow::Result<String> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")?
            .path(unit.path.clone())?
            .build()
            .await?;
        let v = props
            .get(iface.try_into()?, name)
            .await
            .with_context(|| format!("reading {name} of {}", unit.name))?;
        String::try_from(v).with_context(|| format!("{name} of {} is not a string", unit.name))
    }

    /// `RestartUnit` (mode `replace`), then the job's result: `done`, or an error naming the result.
    pub async fn restart(&self, unit: &Unit, timeout: Duration) -> anyhow::Result<()> {
        let mut removed = self.job_removed_stream().await?;
        let job = self
            .manager
            .restart_unit(&unit.name, "replace")
            .await
            .with_context(|| format!("RestartUnit {}", unit.name))?;
        let result = wait_for_job(&mut removed, &job, timeout)
            .await
            .with_context(|| format!("restarting {}", unit.name))?;
        if result != "done" {
            bail!(
                "the restart job of {} ended with result {result:?}",
                unit.name
            );
        }
        Ok(())
    }

    pub async fn reset_failed(&self, unit: &Unit) -> anyhow::Result<()> {
        self.manager
            .reset_failed_unit(&unit.name)
            .await
            .with_context(|| format!("ResetFailedUnit {}", unit.name))
    }

    /// The unit's last journal lines, over this connection: systemd runs the host's `journalctl` as a
    /// transient oneshot unit whose output is a pipe handed over D-Bus (`systemd-run --pipe`'s way),
    /// so the agent reads the journal without executing anything as the host itself.
    pub async fn journal(&self, unit: &Unit, lines: u32) -> anyhow::Result<String> {
        let (read, write) = nix::unistd::pipe()?;
        let mut removed = self.job_removed_stream().await?;
        let name = format!(
            "kwasm-journal-{}-{}.service",
            std::process::id(),
            rand::random::<u32>()
        );
        let argv: Vec<String> = [
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-n",
            &lines.to_string(),
            "-u",
            &unit.name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let exec_start = vec![("journalctl".to_owned(), argv, false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            (
                "Description",
                Value::from("kwasm-agent: journal lines of a failed unit"),
            ),
            ("Type", Value::from("oneshot")),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("ExecStart", Value::from(exec_start)),
            (
                "StandardOutputFileDescriptor",
                Value::from(zbus::zvariant::Fd::from(&write)),
            ),
            (
                "StandardErrorFileDescriptor",
                Value::from(zbus::zvariant::Fd::from(&write)),
            ),
        ];
        let job = self
            .manager
            .start_transient_unit(&name, "fail", &props, &[])
            .await
            .context("StartTransientUnit for journalctl")?;
        drop(props);
        drop(write);
        let result = wait_for_job(&mut removed, &job, Duration::from_secs(10)).await?;
        let text = read_all(read).await?;
        if result != "done" {
            bail!("journalctl on the host ended with result {result:?}: {text}");
        }
        Ok(text)
    }

    /// Job signals, subscribed before the job is queued so its end cannot be missed.
    async fn job_removed_stream(&self) -> anyhow::Result<MessageStream> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)?
            .member("JobRemoved")?
            .path(MANAGER_PATH)?
            .build();
        let stream = MessageStream::for_match_rule(rule, &self.conn, Some(64)).await?;
        // systemd sends job signals only once a client has subscribed.
        self.subscribed
            .get_or_try_init(|| async { self.manager.subscribe().await.context("Subscribe") })
            .await?;
        Ok(stream)
    }
}

async fn connect_at(socket: &std::path::Path, is_bus: bool) -> anyhow::Result<Connection> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let builder = zbus::connection::Builder::unix_stream(stream);
    let builder = if is_bus { builder } else { builder.p2p() };
    Ok(builder.build().await?)
}

/// `JobRemoved(id, job, unit, result)` for `job`: its result.
async fn wait_for_job(
    removed: &mut MessageStream,
    job: &OwnedObjectPath,
    timeout: Duration,
) -> anyhow::Result<String> {
    let wait = async {
        while let Some(msg) = removed.next().await {
            let msg = msg?;
            let (_, path, _, result): (u32, OwnedObjectPath, String, String) =
                msg.body().deserialize()?;
            if &path == job {
                return Ok(result);
            }
        }
        Err(anyhow!("the D-Bus connection to systemd closed"))
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        anyhow!(
            "systemd's job {} did not finish within {}",
            job.as_str(),
            humantime::format_duration(timeout)
        )
    })?
}

async fn read_all(fd: OwnedFd) -> anyhow::Result<String> {
    let mut f = tokio::fs::File::from_std(std::fs::File::from(fd));
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), f.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("journalctl's output did not end"))??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// systemd's D-Bus API takes full unit names; `systemctl` adds `.service` to a bare one, so do we.
fn full_name(unit: &str) -> String {
    const TYPES: [&str; 6] = [
        ".service", ".scope", ".socket", ".target", ".mount", ".slice",
    ];
    if TYPES.iter().any(|t| unit.ends_with(t)) {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_unit_name_is_a_service() {
        assert_eq!(full_name("containerd"), "containerd.service");
        assert_eq!(full_name("k3s-agent"), "k3s-agent.service");
        assert_eq!(
            full_name("snap.microk8s.daemon-containerd"),
            "snap.microk8s.daemon-containerd.service"
        );
        assert_eq!(full_name("containerd.service"), "containerd.service");
    }
}
