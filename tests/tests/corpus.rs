//! The bad-input corpus (docs/reliability.md lists every case): each case is a fresh sandbox host, one
//! bad input, and `kwasm-agent apply` through the real CLI. Every case must fail with a one-line
//! reason naming the problem, and leave every file of the host exactly as it was (the verified
//! download cache aside). KWASM_CORPUS_DOC=FILE writes the table of cases and the errors seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kwasm_tests::agent::Run;
use kwasm_tests::archive::{fake_binary, gzip, release, sha256, tar, Entry};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};
use kwasm_tests::tls_server::TlsServer;

const BIN: &str = "containerd-shim-kwtest-v2";

struct Host {
    sb: Sandbox,
    server: ArtifactServer,
    mounts: Vec<PathBuf>,
}

impl Drop for Host {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Host {
    fn new() -> Self {
        Self {
            sb: Sandbox::new(),
            server: ArtifactServer::start(),
            mounts: Vec::new(),
        }
    }

    /// One shim served at /a with `behaviors`, pinned to `pin` (None: unpinned); `extra` goes into
    /// `[artifacts]`.
    fn shim(&self, behaviors: Vec<Behavior>, pin: Option<&str>, extra: &str) {
        self.server.route("/a", behaviors);
        let shim = ShimSpec::new("kwtest", BIN).platform("amd64", &self.server.url("/a"), pin);
        self.sb.write_settings(&artifact_settings(extra, &[shim]));
    }

    fn archive(&self, archive: Vec<u8>, extra: &str) {
        let d = sha256(&archive);
        self.shim(vec![Behavior::Serve(archive)], Some(&d), extra);
    }

    fn settings(&self, text: &str) {
        self.sb.write_settings(text);
    }

    fn write(&self, host_path: &str, content: &[u8]) {
        let p = self.sb.host(host_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn mount(
        &mut self,
        host_path: &str,
        source: Option<&str>,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
        data: Option<&str>,
    ) {
        let p = self.sb.host(host_path);
        std::fs::create_dir_all(&p).unwrap();
        let src = source.map(|_| p.clone());
        nix::mount::mount(
            src.as_deref().or(Some(Path::new("none"))),
            &p,
            fstype,
            flags,
            data,
        )
        .unwrap_or_else(|e| panic!("mount {}: {e}", p.display()));
        self.mounts.push(p);
    }

    fn apply(&self) -> Run {
        self.sb.run("apply", &["--arch", "amd64"])
    }

    /// Every file under the host root (the verified download cache and the lock file aside), with its
    /// digest or link target.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(&self.sb.root, &self.sb.root, &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_owned();
        if rel.starts_with("opt/kwasm/cache/sha256")
            || rel.starts_with("opt/kwasm/cache/partial")
            || rel == Path::new("opt/kwasm/lock")
        {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_symlink() {
            out.insert(
                rel,
                format!("-> {}", std::fs::read_link(&p).unwrap().display()),
            );
        } else if meta.is_dir() {
            walk(root, &p, out);
        } else {
            out.insert(rel, sha256(&std::fs::read(&p).unwrap_or_default()));
        }
    }
}

struct Case {
    area: &'static str,
    name: &'static str,
    /// What the one-line reason must contain.
    expect: &'static str,
    setup: fn(&mut Host),
}

fn pinned_binary() -> Vec<u8> {
    fake_binary("corpus", 20_000)
}

fn good_archive() -> Vec<u8> {
    release(BIN, &pinned_binary())
}

fn shim_settings(shim_toml: &str, extra: &str) -> String {
    format!("{}{shim_toml}", artifact_settings(extra, &[]))
}

fn cases() -> Vec<Case> {
    use nix::mount::MsFlags;
    vec![
        // ---- downloads
        Case {
            area: "download",
            name: "digest mismatch",
            expect: "sha256 mismatch",
            setup: |h| {
                h.shim(
                    vec![Behavior::Serve(good_archive())],
                    Some(&"0".repeat(64)),
                    "",
                );
            },
        },
        Case {
            area: "download",
            name: "truncated body, every attempt",
            expect: "giving up after 4 attempts",
            setup: |h| {
                let a = good_archive();
                let d = sha256(&a);
                h.shim(
                    std::iter::repeat_n(
                        Behavior::Truncate {
                            body: a,
                            after: 100,
                        },
                        8,
                    )
                    .collect(),
                    Some(&d),
                    "",
                );
            },
        },
        Case {
            area: "download",
            name: "stalled (slow) body",
            expect: "no data from",
            setup: |h| {
                let a = good_archive();
                let d = sha256(&a);
                h.shim(
                    std::iter::repeat_n(Behavior::Stall { body: a, after: 10 }, 8).collect(),
                    Some(&d),
                    "",
                );
            },
        },
        Case {
            area: "download",
            name: "HTTP 503, every attempt",
            expect: "HTTP 503",
            setup: |h| {
                h.shim(
                    vec![Behavior::Status(503); 8],
                    Some(&sha256(&good_archive())),
                    "",
                );
            },
        },
        Case {
            area: "download",
            name: "HTTP 404",
            expect: "HTTP 404",
            setup: |h| {
                h.shim(
                    vec![Behavior::Status(404)],
                    Some(&sha256(&good_archive())),
                    "",
                );
            },
        },
        Case {
            area: "download",
            name: "https redirect to plain http",
            expect: "redirect to plain http refused",
            setup: |h| {
                let tls = TlsServer::redirecting("/a", &h.server.url("/a"));
                h.server.route("/a", vec![Behavior::Serve(good_archive())]);
                let shim = ShimSpec::new("kwtest", BIN).platform(
                    "amd64",
                    &tls.url("/a"),
                    Some(&sha256(&good_archive())),
                );
                let ca = tls.ca_pem.clone();
                h.write("/etc/kwasm/ca.pem", ca.as_bytes());
                let text = artifact_settings("ca_bundle = \"/etc/kwasm/ca.pem\"\n", &[shim])
                    .replace("allow_http = true", "allow_http = false");
                h.settings(&text);
                std::mem::forget(tls); // serves until the process ends
            },
        },
        Case {
            area: "download",
            name: "plain http URL not allowed",
            expect: "refusing plain http URL",
            setup: |h| {
                let shim = ShimSpec::new("kwtest", BIN).platform(
                    "amd64",
                    &h.server.url("/a"),
                    Some(&sha256(&good_archive())),
                );
                h.settings(
                    &artifact_settings("", &[shim])
                        .replace("allow_http = true", "allow_http = false"),
                );
            },
        },
        Case {
            area: "download",
            name: "larger than max_size",
            expect: "max_size",
            setup: |h| {
                h.archive(
                    release(BIN, &fake_binary("big", 300_000)),
                    "max_size = \"100KiB\"\n",
                );
            },
        },
        // ---- archives
        Case {
            area: "archive",
            name: "path traversal (../)",
            expect: "escapes the archive",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[
                        Entry::File("../../etc/cron.d/x", b"evil"),
                        Entry::File(BIN, &pinned_binary()),
                    ])),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "absolute path",
            expect: "absolute path",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[
                        Entry::File("/etc/passwd", b"evil"),
                        Entry::File(BIN, &pinned_binary()),
                    ])),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "binary is a symlink",
            expect: "symbolic link",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[Entry::Symlink(BIN, "/usr/bin/containerd")])),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "binary is a hard link",
            expect: "hard link",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[Entry::File("x", b"y"), Entry::Hardlink(BIN, "x")])),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "binary is a device",
            expect: "character device",
            setup: |h| {
                h.archive(gzip(&tar(&[Entry::CharDevice(BIN)])), "");
            },
        },
        Case {
            area: "archive",
            name: "binary twice",
            expect: "twice",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[
                        Entry::File(&format!("a/{BIN}"), b"1"),
                        Entry::File(&format!("b/{BIN}"), b"2"),
                    ])),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "decompression bomb",
            expect: "decompression bomb",
            setup: |h| {
                h.archive(
                    gzip(&tar(&[Entry::File(BIN, &vec![0u8; 4 << 20])])),
                    "max_size = \"1MiB\"\n",
                );
            },
        },
        Case {
            area: "archive",
            name: "binary missing",
            expect: "not found in the archive",
            setup: |h| {
                h.archive(gzip(&tar(&[Entry::File("README", b"hi")])), "");
            },
        },
        Case {
            area: "archive",
            name: "binary that does not run here",
            expect: "does not start on this host",
            setup: |h| {
                h.archive(
                    release(BIN, &b"\x7fELF\x02\x01\x01\0 other arch".repeat(50)),
                    "",
                );
            },
        },
        Case {
            area: "archive",
            name: "not an archive, not a program (HTML error page)",
            expect: "does not start on this host",
            setup: |h| {
                h.archive(b"<html>rate limited</html>".to_vec(), "");
            },
        },
        // ---- settings
        Case {
            area: "settings",
            name: "unknown key",
            expect: "unknown field `allow_htp`",
            setup: |h| {
                h.settings("[artifacts]\nallow_htp = true\n");
            },
        },
        Case {
            area: "settings",
            name: "unparseable duration",
            expect: "soon",
            setup: |h| {
                h.settings("[containerd]\ntimeout = \"soon\"\n");
            },
        },
        Case {
            area: "settings",
            name: "zero timeout",
            expect: "containerd.timeout",
            setup: |h| {
                h.settings("[containerd]\ntimeout = \"0s\"\n");
            },
        },
        Case {
            area: "settings",
            name: "huge duration",
            expect: "containerd.timeout",
            setup: |h| {
                h.settings("[containerd]\ntimeout = \"18446744073709551615s\"\n");
            },
        },
        Case {
            area: "settings",
            name: "number beyond any integer",
            expect: "attempts",
            setup: |h| {
                h.settings("[artifacts]\nattempts = 99999999999999999999\n");
            },
        },
        Case {
            area: "settings",
            name: "shim name not a DNS label",
            expect: "DNS label",
            setup: |h| {
                let s = shim_settings("[[shims]]\nname = \"Spin_V2\"\nruntime_type = \"io.containerd.spin.v2\"\nbinary = \"x\"\nversion = \"1\"\n", "");
                h.settings(&s);
            },
        },
        Case {
            area: "settings",
            name: "the same shim twice",
            expect: "listed twice",
            setup: |h| {
                let one = "[[shims]]\nname = \"spin\"\nruntime_type = \"io.containerd.spin.v2\"\nbinary = \"x\"\nversion = \"1\"\n";
                let s = shim_settings(
                    &format!("{one}{}", one.replace("binary = \"x\"", "binary = \"y\"")),
                    "",
                );
                h.settings(&s);
            },
        },
        Case {
            area: "settings",
            name: "unknown architecture",
            expect: "unknown architecture",
            setup: |h| {
                let s = shim_settings("[[shims]]\nname = \"spin\"\nruntime_type = \"t\"\nbinary = \"x\"\nversion = \"1\"\n[[shims.platforms]]\narch = \"mips\"\nurl = \"https://x/a\"\n", "");
                h.settings(&s);
            },
        },
        Case {
            area: "settings",
            name: "no platform for this node",
            expect: "no platform for architecture amd64",
            setup: |h| {
                let shim = ShimSpec::new("kwtest", BIN).platform(
                    "arm64",
                    &h.server.url("/a"),
                    Some(&"a".repeat(64)),
                );
                h.settings(&artifact_settings("", &[shim]));
            },
        },
        Case {
            area: "settings",
            name: "unpinned platform",
            expect: "has no sha256",
            setup: |h| {
                h.shim(vec![Behavior::Serve(good_archive())], None, "");
            },
        },
        Case {
            area: "settings",
            name: "relative install dir",
            expect: "host.install_dir",
            setup: |h| {
                h.settings("[host]\ninstall_dir = \"opt/kwasm\"\n");
            },
        },
        Case {
            area: "settings",
            name: "verify without an issuer",
            expect: "verify.issuer",
            setup: |h| {
                let s = shim_settings("[[shims]]\nname = \"spin\"\nruntime_type = \"t\"\nbinary = \"x\"\nversion = \"1\"\n[shims.verify]\nidentity = \"https://github.com/o/r/.github/workflows/r.yml@refs/heads/main\"\n", "");
                h.settings(&s);
            },
        },
        Case {
            area: "settings",
            name: "not TOML at all",
            expect: "settings file",
            setup: |h| {
                h.settings("this is = = not toml\n[[[");
            },
        },
        // ---- host
        Case {
            area: "host",
            name: "containerd config of an unknown version",
            expect: "version 5",
            setup: |h| {
                h.write("/etc/containerd/config.toml", b"version = 5\n");
                h.archive(good_archive(), "");
            },
        },
        Case {
            area: "host",
            name: "containerd config that is not TOML",
            expect: "config.toml",
            setup: |h| {
                h.write("/etc/containerd/config.toml", b"version = 2\n[plugins\n");
                h.archive(good_archive(), "");
            },
        },
        Case {
            area: "host",
            name: "runtime table of another tool under the same name",
            expect: "already configured",
            setup: |h| {
                h.write("/etc/containerd/config.toml", b"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kwtest]\nruntime_type = \"io.containerd.other.v1\"\n");
                h.archive(good_archive(), "");
            },
        },
        Case {
            area: "host",
            name: "corrupted state.json",
            expect: "state",
            setup: |h| {
                h.write("/opt/kwasm/state.json", b"{\"shims\": {\"kwtest\": 42");
                h.archive(good_archive(), "");
            },
        },
        Case {
            area: "host",
            name: "read-only install dir",
            expect: "Read-only file system",
            setup: |h| {
                h.archive(good_archive(), "");
                std::fs::create_dir_all(h.sb.host("/opt/kwasm")).unwrap();
                h.mount("/opt/kwasm", Some("bind"), None, MsFlags::MS_BIND, None);
                let p = h.sb.host("/opt/kwasm");
                nix::mount::mount(
                    None::<&str>,
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .unwrap();
            },
        },
        Case {
            area: "host",
            name: "full disk (tiny tmpfs as install dir)",
            expect: "No space left on device",
            setup: |h| {
                h.archive(release(BIN, &fake_binary("full", 600_000)), "");
                h.mount(
                    "/opt/kwasm",
                    None,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("size=256k"),
                );
            },
        },
    ]
}

#[test]
fn every_bad_input_is_refused_with_a_clear_reason_and_the_host_unchanged() {
    let all = cases();
    assert!(all.len() >= 30, "the corpus has {} cases", all.len());
    let mut doc = String::from("| # | area | bad input | what the user sees (`kwasm-agent: error: …`) |\n|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let mut h = Host::new();
        (c.setup)(&mut h);
        let before = h.snapshot();
        let r = h.apply();
        let after = h.snapshot();
        let reason = r.reason();
        if r.code == 0 {
            failures.push(format!("{}: apply succeeded", c.name));
        } else if !reason.contains(c.expect) {
            failures.push(format!("{}: wanted {:?} in {reason:?}", c.name, c.expect));
        }
        if before != after {
            let changed: Vec<&PathBuf> = after
                .keys()
                .chain(before.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect();
            failures.push(format!("{}: the host changed: {changed:?}", c.name));
        }
        if r.stderr.contains("panicked") {
            failures.push(format!("{}: panicked", c.name));
        }
        let shown = reason
            .trim_start_matches("kwasm-agent: error: ")
            .replace('|', "\\|");
        let shown =
            h.sb.path()
                .to_str()
                .map(|p| shown.replace(p, "…"))
                .unwrap_or(shown);
        doc.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            i + 1,
            c.area,
            c.name,
            shown
        ));
    }
    if let Ok(path) = std::env::var("KWASM_CORPUS_DOC") {
        std::fs::write(path, &doc).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_corrupted_cache_entry_or_installed_binary_is_healed_from_a_fresh_download() {
    let h = Host::new();
    let archive = good_archive();
    h.archive(archive.clone(), "");
    h.apply().ok();
    let cached =
        h.sb.host(&format!("/opt/kwasm/cache/sha256/{}", sha256(&archive)));
    std::fs::write(&cached, b"bit rot").unwrap();
    let installed = std::fs::canonicalize(h.sb.bin(BIN)).unwrap();
    std::fs::write(&installed, b"tampered").unwrap();
    h.server.clear_log();
    let r = h.apply();
    r.ok();
    assert_eq!(std::fs::read(h.sb.bin(BIN)).unwrap(), pinned_binary());
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        archive,
        "the cache entry was not replaced"
    );
    assert_eq!(h.server.count("/a"), 1, "one fresh download");
}
