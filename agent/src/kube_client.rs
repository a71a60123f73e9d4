//! The Kubernetes client every command uses: in-cluster or KUBECONFIG, and a User-Agent naming the
//! component, so the API server's audit log and request metrics tell the node agents, the catalog
//! controller and the uninstall hook apart (and so does `bench-fleet`).

use anyhow::Context as _;

/// `component`: "node", "catalog", "uninstall".
pub async fn client(component: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes client config (in-cluster or KUBECONFIG)")?;
    let agent = format!("kwasm-agent/{} ({component})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("the User-Agent header")?,
    ));
    kube::Client::try_from(config).context("building the Kubernetes client")
}
