//! Where an artifact really comes from: mirror rewrites applied, and the scheme policy enforced
//! (https always; http only when allowed; file:// for air-gapped hosts).

use std::path::PathBuf;

use anyhow::bail;
use url::Url;

use crate::settings::ArtifactSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(Url),
    File(PathBuf),
}

impl Source {
    pub fn resolve(declared: &str, settings: &ArtifactSettings) -> anyhow::Result<Source> {
        let rewritten = apply_mirror(declared, settings);
        let url = Url::parse(&rewritten)
            .map_err(|e| anyhow::anyhow!("invalid URL {rewritten:?}: {e}"))?;
        match url.scheme() {
            "https" => Ok(Source::Http(url)),
            "http" if settings.allow_http => Ok(Source::Http(url)),
            "http" => bail!(
                "refusing plain http URL {url}: set artifacts.allow_http = true to allow it (labs and loopback only)"
            ),
            "file" => match url.to_file_path() {
                Ok(p) => Ok(Source::File(p)),
                Err(()) => bail!("file URL {url} does not name a local path"),
            },
            other => bail!("unsupported URL scheme {other:?} in {url}: use https, http or file"),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Source::Http(u) => u.to_string(),
            Source::File(p) => format!("file://{}", p.display()),
        }
    }
}

/// The longest matching prefix wins, so a specific mirror can override a general one.
fn apply_mirror(url: &str, settings: &ArtifactSettings) -> String {
    settings
        .mirrors
        .iter()
        .filter(|(from, _)| url.starts_with(from.as_str()))
        .max_by_key(|(from, _)| from.len())
        .map(|(from, to)| format!("{to}{}", &url[from.len()..]))
        .unwrap_or_else(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow_http: bool) -> ArtifactSettings {
        let mut s = ArtifactSettings {
            allow_http,
            ..Default::default()
        };
        s.mirrors.insert(
            "https://github.com/".into(),
            "https://mirror.local/gh/".into(),
        );
        s.mirrors.insert(
            "https://github.com/spin/".into(),
            "file:///srv/spin/".into(),
        );
        s
    }

    #[test]
    fn longest_mirror_prefix_wins() {
        let s = settings(false);
        assert_eq!(
            Source::resolve("https://github.com/a/b.tgz", &s).unwrap(),
            Source::Http(Url::parse("https://mirror.local/gh/a/b.tgz").unwrap())
        );
        assert_eq!(
            Source::resolve("https://github.com/spin/x.tgz", &s).unwrap(),
            Source::File("/srv/spin/x.tgz".into())
        );
    }

    #[test]
    fn plain_http_needs_permission() {
        let e = Source::resolve("http://127.0.0.1/x", &settings(false)).unwrap_err();
        assert!(e.to_string().contains("allow_http"));
        assert!(Source::resolve("http://127.0.0.1/x", &settings(true)).is_ok());
        assert!(Source::resolve("ftp://x/y", &settings(true)).is_err());
    }
}
