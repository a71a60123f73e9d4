//! containerd's answer: in every namespace, the containers whose runtime is the shim's (by runtime
//! type, as CRI records it, or by binary path, as `ctr run --runtime /path` does) and whose task is
//! not stopped.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, ListContainersRequest, ListNamespacesRequest, ListTasksRequest,
};
use containerd_client::tonic::Request;
use containerd_client::types::v1::Status;
use containerd_client::with_namespace;

use super::{ShimQuery, ShimUser};

const TIMEOUT: Duration = Duration::from_secs(15);

pub async fn users(socket: &Path, q: &ShimQuery) -> anyhow::Result<Vec<ShimUser>> {
    tokio::time::timeout(TIMEOUT, ask(socket, q))
        .await
        .map_err(|_| anyhow::anyhow!("containerd did not answer within {TIMEOUT:?}"))?
        .with_context(|| {
            format!(
                "asking containerd at {} which containers run on the shim",
                socket.display()
            )
        })
}

async fn ask(socket: &Path, q: &ShimQuery) -> anyhow::Result<Vec<ShimUser>> {
    let channel = containerd_client::connect(socket).await?;
    let namespaces = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await?
        .into_inner()
        .namespaces;
    let mut found = Vec::new();
    for ns in namespaces.iter().map(|n| n.name.as_str()) {
        let containers = ContainersClient::new(channel.clone())
            .list(with_namespace!(ListContainersRequest::default(), ns))
            .await?
            .into_inner()
            .containers;
        let ours: Vec<&Container> = containers.iter().filter(|c| runs_on(c, q)).collect();
        if ours.is_empty() {
            continue;
        }
        let tasks = TasksClient::new(channel.clone())
            .list(with_namespace!(ListTasksRequest::default(), ns))
            .await?
            .into_inner()
            .tasks;
        for c in ours {
            let live = tasks
                .iter()
                .find(|t| t.id == c.id || t.container_id == c.id)
                .filter(|t| t.status != Status::Stopped as i32);
            if let Some(t) = live {
                found.push(ShimUser {
                    id: Some(c.id.clone()),
                    namespace: Some(ns.to_owned()),
                    pid: (t.pid != 0).then_some(t.pid),
                });
            }
        }
    }
    Ok(found)
}

fn runs_on(c: &Container, q: &ShimQuery) -> bool {
    let Some(rt) = &c.runtime else {
        return false;
    };
    let named = q.runtime_type.as_deref() == Some(rt.name.as_str())
        || q.executables
            .iter()
            .any(|p| p.as_os_str() == rt.name.as_str());
    named && started_before(c, q.started_before)
}

fn started_before(c: &Container, limit: Option<SystemTime>) -> bool {
    let (Some(limit), Some(created)) = (limit, &c.created_at) else {
        return true;
    };
    let created = SystemTime::UNIX_EPOCH
        + Duration::new(created.seconds.max(0) as u64, created.nanos.max(0) as u32);
    created < limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::services::v1::container::Runtime;

    fn container(runtime: &str, created_secs: i64) -> Container {
        Container {
            id: "c1".into(),
            runtime: Some(Runtime {
                name: runtime.into(),
                options: None,
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: created_secs,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_is_the_shims_by_runtime_type_or_binary_path() {
        let q = ShimQuery {
            runtime_type: Some("io.containerd.kwtest.v2".into()),
            executables: vec!["/opt/kwasm/bin/containerd-shim-kwtest-v2".into()],
            started_before: None,
        };
        assert!(runs_on(&container("io.containerd.kwtest.v2", 1), &q));
        assert!(runs_on(
            &container("/opt/kwasm/bin/containerd-shim-kwtest-v2", 1),
            &q
        ));
        assert!(!runs_on(&container("io.containerd.runc.v2", 1), &q));
    }

    #[test]
    fn an_earlier_version_is_run_only_by_containers_created_before_the_switch() {
        let q = ShimQuery {
            runtime_type: Some("io.containerd.kwtest.v2".into()),
            executables: vec![],
            started_before: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
        };
        assert!(runs_on(&container("io.containerd.kwtest.v2", 99), &q));
        assert!(!runs_on(&container("io.containerd.kwtest.v2", 101), &q));
    }
}
