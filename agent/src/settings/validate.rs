//! Every value of the settings file checked before anything runs: names that Kubernetes and containerd
//! accept, host paths that are absolute, and durations, sizes and counts inside ranges the agent's
//! arithmetic and its users' patience can take. An error names the key and says what was expected.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;

use super::{ArtifactSettings, Auto, ContainerdSettings, RestartMethod, Settings, Shim};

type Invalid = (String, String);

/// A shim's name is its CRI handler and its RuntimeClass's `handler`: a DNS label (RFC 1123). It is
/// also part of the shim's node label (`kwasm.sh/shim-<name>`), whose name part Kubernetes caps at 63.
pub const MAX_SHIM_NAME: usize = 50;

pub fn check(s: &Settings) -> Result<(), Invalid> {
    host_trigger_and_agent(s)?;
    artifacts(&s.artifacts)?;
    containerd(&s.containerd)?;
    leases(s)?;
    shims(&s.shims)
}

fn host_trigger_and_agent(s: &Settings) -> Result<(), Invalid> {
    absolute("host.root", &s.host.root)?;
    absolute("host.install_dir", &s.host.install_dir)?;
    for (key, v) in [
        ("trigger.annotation", &s.trigger.annotation),
        ("trigger.label", &s.trigger.label),
        ("trigger.shims_annotation", &s.trigger.shims_annotation),
    ] {
        qualified_name(key, v)?;
    }
    address("agent.listen", &s.agent.listen)?;
    within("agent.resync", s.agent.resync, secs(1), days(7))?;
    within("agent.max_backoff", s.agent.max_backoff, secs(1), days(1))?;
    within(
        "agent.api_read_timeout",
        s.agent.api_read_timeout,
        secs(1),
        secs(3600),
    )?;
    if !s.trigger.startup_taint.is_empty() {
        qualified_name("trigger.startup_taint", &s.trigger.startup_taint)?;
    }
    Ok(())
}

fn artifacts(a: &ArtifactSettings) -> Result<(), Invalid> {
    if let Some(p) = &a.ca_bundle {
        absolute("artifacts.ca_bundle", p)?;
    }
    for (from, to) in &a.mirrors {
        for (what, u) in [("prefix", from), ("replacement", to)] {
            url::Url::parse(u).map_err(|_| {
                invalid(
                    "artifacts.mirrors",
                    format!("the {what} {u:?} is not a URL"),
                )
            })?;
        }
    }
    if a.max_size < ByteSize::kib(1) || a.max_size > ByteSize::gib(64) {
        return Err(invalid(
            "artifacts.max_size",
            format!("expected between 1KiB and 64GiB, found {}", a.max_size),
        ));
    }
    within(
        "artifacts.connect_timeout",
        a.connect_timeout,
        millis(100),
        mins(10),
    )?;
    within(
        "artifacts.read_timeout",
        a.read_timeout,
        millis(100),
        mins(60),
    )?;
    within("artifacts.backoff", a.backoff, millis(1), mins(10))?;
    if !(1..=100).contains(&a.attempts) {
        return Err(invalid(
            "artifacts.attempts",
            format!("expected 1 to 100, found {}", a.attempts),
        ));
    }
    Ok(())
}

fn containerd(c: &ContainerdSettings) -> Result<(), Invalid> {
    for (key, p) in [
        ("containerd.config", c.config.given()),
        ("containerd.socket", c.socket.given()),
        ("containerd.binary", c.binary.given()),
        ("containerd.link_dir", c.link_dir.as_ref()),
    ] {
        if let Some(p) = p {
            absolute(key, p)?;
        }
    }
    if let Auto::Given(unit) = &c.unit {
        if unit.is_empty() || unit.contains('/') || unit.chars().any(char::is_whitespace) {
            return Err(invalid(
                "containerd.unit",
                format!("expected a systemd unit name, found {unit:?}"),
            ));
        }
    }
    if let RestartMethod::Argv(argv) = &c.restart {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(invalid("containerd.restart", "the program is empty".into()));
        }
    }
    within("containerd.timeout", c.timeout, secs(1), mins(60))?;
    Ok(())
}

fn address(key: &str, listen: &str) -> Result<(), Invalid> {
    listen.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
        invalid(
            key,
            format!("expected an address and port such as \"0.0.0.0:9101\" or \"[::]:9101\", found {listen:?}"),
        )
    })
}

/// The restart slots' and the catalog leader's Leases, and where the catalog serves its probes.
fn leases(s: &Settings) -> Result<(), Invalid> {
    if !s.catalog.listen.is_empty() {
        address("catalog.listen", &s.catalog.listen)?;
    }
    if let Some(f) = &s.fleet {
        // A holder renews at a third of the duration; shorter would flap on a busy API server.
        within("fleet.lease_duration", f.lease_duration, secs(5), mins(60))?;
        namespace("fleet.lease_namespace", f.lease_namespace.as_deref())?;
    }
    within(
        "catalog.lease_duration",
        s.catalog.lease_duration,
        secs(3),
        mins(10),
    )?;
    within(
        "catalog.status_interval",
        s.catalog.status_interval,
        Duration::ZERO,
        mins(5),
    )?;
    namespace(
        "catalog.lease_namespace",
        s.catalog.lease_namespace.as_deref(),
    )?;
    Ok(())
}

fn shims(shims: &[Shim]) -> Result<(), Invalid> {
    let mut names = BTreeSet::new();
    let mut binaries = BTreeSet::new();
    for (i, shim) in shims.iter().enumerate() {
        let key = |k: &str| format!("shims[{i}].{k}");
        if !is_dns_label(&shim.name) || shim.name.len() > MAX_SHIM_NAME {
            return Err((
                key("name"),
                format!(
                    "expected a DNS label of at most {MAX_SHIM_NAME} characters (lowercase letters, digits and '-', starting and ending with a letter or digit): it is the CRI handler and the RuntimeClass handler; found {:?}",
                    shim.name
                ),
            ));
        }
        if !names.insert(shim.name.as_str()) {
            return Err((key("name"), format!("shim {:?} is listed twice", shim.name)));
        }
        if shim.binary.is_empty()
            || shim.binary.contains('/')
            || shim.binary.starts_with('.')
            || shim.binary.chars().any(char::is_whitespace)
        {
            return Err((
                key("binary"),
                format!("expected a plain file name, found {:?}", shim.binary),
            ));
        }
        if !binaries.insert(shim.binary.as_str()) {
            return Err((
                key("binary"),
                format!(
                    "binary {:?} is named by two shims; each shim installs its own file",
                    shim.binary
                ),
            ));
        }
        if shim.runtime_type.is_empty() || shim.runtime_type.chars().any(char::is_whitespace) {
            return Err((
                key("runtime_type"),
                format!(
                    "expected a runtime name such as \"io.containerd.spin.v2\", found {:?}",
                    shim.runtime_type
                ),
            ));
        }
        if !is_label_value(&shim.version) || shim.version.is_empty() {
            return Err((
                key("version"),
                format!(
                    "expected a version usable as a node label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit), found {:?}",
                    shim.version
                ),
            ));
        }
        if let Some(v) = &shim.verify {
            verify(&key, v, &shim.binary)?;
        }
        platforms(i, shim)?;
    }
    Ok(())
}

/// One shim's platforms: one per architecture, digests of 64 hex digits, URLs.
fn platforms(i: usize, shim: &Shim) -> Result<(), Invalid> {
    let mut arches = BTreeSet::new();
    for (j, p) in shim.platforms.iter().enumerate() {
        let pkey = |k: &str| format!("shims[{i}].platforms[{j}].{k}");
        if !arches.insert(p.arch) {
            return Err((pkey("arch"), format!("{} is listed twice", p.arch)));
        }
        if let Some(d) = &p.sha256 {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((
                    pkey("sha256"),
                    format!("expected 64 hex digits, found {d:?}"),
                ));
            }
        }
        if url::Url::parse(&p.url).is_err() {
            return Err((pkey("url"), format!("not a URL: {:?}", p.url)));
        }
    }
    Ok(())
}

pub fn verify(
    key: &dyn Fn(&str) -> String,
    v: &super::Verify,
    binary: &str,
) -> Result<(), Invalid> {
    let k = |f: &str| key(&format!("verify.{f}"));
    match &v.public_key {
        Some(p) => key_based(&k, v, p)?,
        None => keyless(&k, v)?,
    }
    let sig = v.signature_member(binary);
    let cert = v.certificate_member(binary);
    for (field, name) in [("signature", Some(&sig)), ("certificate", cert.as_ref())] {
        let Some(name) = name else { continue };
        if name.is_empty() || name.contains('/') || name == binary {
            return Err((
                k(field),
                format!(
                    "expected the file name of an archive member beside the binary, found {name:?}"
                ),
            ));
        }
    }
    if Some(&sig) == cert.as_ref() {
        return Err((
            k("certificate"),
            "is the same member as the signature".into(),
        ));
    }
    Ok(())
}

/// `public_key`: the signature is checked against that key alone; keyless fields are mistakes.
fn key_based(k: &dyn Fn(&str) -> String, v: &super::Verify, key: &Path) -> Result<(), Invalid> {
    absolute(&k("public_key"), key)?;
    for (field, set) in [
        ("identity", v.identity.is_some()),
        ("identity_regexp", v.identity_regexp.is_some()),
        ("issuer", v.issuer.is_some()),
        ("certificate", v.certificate.is_some()),
        ("trust_root", v.trust_root.is_some()),
    ] {
        if set {
            return Err((
                k(field),
                "belongs to keyless verification; with public_key the signature is checked against that key alone".into(),
            ));
        }
    }
    Ok(())
}

/// Keyless: who must have signed (identity or identity_regexp) and the OIDC issuer.
fn keyless(k: &dyn Fn(&str) -> String, v: &super::Verify) -> Result<(), Invalid> {
    match (&v.identity, &v.identity_regexp) {
        (Some(_), Some(_)) => {
            return Err((
                k("identity_regexp"),
                "set identity or identity_regexp, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                k("identity"),
                "keyless verification needs identity or identity_regexp (who must have signed), or set public_key".into(),
            ))
        }
        (Some(i), None) if i.is_empty() => return Err((k("identity"), "is empty".into())),
        (None, Some(r)) => {
            regex::Regex::new(r)
                .map_err(|e| (k("identity_regexp"), format!("not a regular expression: {e}")))?;
        }
        _ => {}
    }
    if v.issuer.as_deref().is_none_or(str::is_empty) {
        return Err((
            k("issuer"),
            "keyless verification needs the OIDC issuer, e.g. \"https://token.actions.githubusercontent.com\"".into(),
        ));
    }
    if let Some(p) = &v.trust_root {
        absolute(&k("trust_root"), p)?;
    }
    Ok(())
}

fn invalid(key: &str, message: String) -> Invalid {
    (key.to_owned(), message)
}

fn absolute(key: &str, p: &Path) -> Result<(), Invalid> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "expected an absolute host path, found {:?}",
                p.display().to_string()
            ),
        ))
    }
}

/// An optional namespace name (where Leases live).
fn namespace(key: &str, ns: Option<&str>) -> Result<(), Invalid> {
    match ns {
        Some(ns) if !is_dns_label(ns) => Err(invalid(
            key,
            format!("expected a namespace name, found {ns:?}"),
        )),
        _ => Ok(()),
    }
}

fn within(key: &str, d: Duration, min: Duration, max: Duration) -> Result<(), Invalid> {
    if d < min || d > max {
        return Err(invalid(
            key,
            format!(
                "expected between {} and {}, found {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(())
}

fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// RFC 1123 label: what Kubernetes accepts as a RuntimeClass handler.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// A Kubernetes label value (the shim's version label shows it).
fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && v.bytes().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// A Kubernetes label or annotation key: `[prefix/]name`.
fn qualified_name(key: &str, v: &str) -> Result<(), Invalid> {
    let (prefix, name) = match v.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, v),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns_label));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("expected a Kubernetes label/annotation key such as \"kwasm.sh/kwasm-node\", found {v:?}"),
        ))
    }
}
