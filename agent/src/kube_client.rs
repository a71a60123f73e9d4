//! The Kubernetes client every command uses: in-cluster or KUBECONFIG, and a User-Agent naming the
//! component, so the API server's audit log and request metrics tell the node agents, the catalog
//! controller and the uninstall hook apart (and so does `bench-fleet`); a read timeout, so a
//! connection that died without a word (no FIN: a NAT or a load balancer dropping it) is noticed and
//! its watch made again; and the API's limit on an Event's note, which both controllers' Events keep.

use anyhow::Context as _;

/// `component`: "node", "catalog", "uninstall"; `read_timeout`: `[agent] api_read_timeout`.
pub async fn client(
    component: &str,
    read_timeout: std::time::Duration,
) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes client config (in-cluster or KUBECONFIG)")?;
    // Counted from each request sent, not from when a pooled connection went idle.
    config.read_timeout = Some(read_timeout);
    config.reset_reader_on_write = true;
    let agent = format!("kwasm-agent/{} ({component})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("the User-Agent header")?,
    ));
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The Events API refuses notes longer than this many bytes.
const EVENT_NOTE_MAX: usize = 1024;

/// An Event note of at most `EVENT_NOTE_MAX` bytes, cut on a character boundary.
pub fn event_note(s: &str) -> String {
    let mut end = s.len().min(EVENT_NOTE_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn notes_are_cut_on_character_boundaries() {
        let s = "é".repeat(600);
        let t = super::event_note(&s);
        assert!(t.len() <= 1024 && t.chars().all(|c| c == 'é'));
        assert_eq!(super::event_note("short"), "short");
    }
}
