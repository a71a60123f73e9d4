//! The artifact pipeline through the real CLI against a real loopback HTTP server.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kwasm_tests::agent::{agent, output, run_cmd};
use kwasm_tests::archive::{fake_binary, gzip, release, sha256, tar, Entry};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};

const BIN: &str = "containerd-shim-kwtest-v2";

fn apply(sb: &Sandbox, extra: &[&str]) -> kwasm_tests::agent::Run {
    run_cmd(
        "apply",
        &sb.settings,
        &sb.root,
        &[&["--arch", "amd64"], extra].concat(),
    )
}

struct Case {
    sb: Sandbox,
    server: ArtifactServer,
    binary: Vec<u8>,
    archive: Vec<u8>,
}

/// One shim served at /shim.tar.gz with its correct digest pinned.
fn case(behaviors: impl FnOnce(&[u8]) -> Vec<Behavior>) -> Case {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let binary = fake_binary("one", 300_000);
    let archive = release(BIN, &binary);
    server.route("/shim.tar.gz", behaviors(&archive));
    let shim = ShimSpec::new("kwtest", BIN).platform(
        "amd64",
        &server.url("/shim.tar.gz"),
        Some(&sha256(&archive)),
    );
    sb.write_settings(&artifact_settings("", &[shim]));
    Case {
        sb,
        server,
        binary,
        archive,
    }
}

fn assert_installed(c: &Case) {
    let path = c.sb.bin(BIN);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        c.binary,
        "installed binary differs"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.sb.host("/opt/kwasm/state.json")).unwrap())
            .unwrap();
    let rec = &state["shims"]["kwtest"];
    assert_eq!(rec["binary_sha256"], sha256(&c.binary));
    assert_eq!(rec["archive_sha256"], sha256(&c.archive));
    assert_eq!(rec["binary_path"], format!("/opt/kwasm/bin/{BIN}"));
    assert_eq!(rec["arch"], "amd64");
}

fn assert_nothing_installed(sb: &Sandbox) {
    assert!(
        sb.list("/opt/kwasm/bin").is_empty(),
        "bin dir: {:?}",
        sb.list("/opt/kwasm/bin")
    );
    assert!(
        sb.list("/opt/kwasm/cache/sha256").is_empty(),
        "cache: {:?}",
        sb.list("/opt/kwasm/cache/sha256")
    );
    assert!(
        sb.list("/opt/kwasm/cache/staging").is_empty(),
        "staging: {:?}",
        sb.list("/opt/kwasm/cache/staging")
    );
}

#[test]
fn right_digest_installs_and_status_reports_it() {
    let c = case(|a| vec![Behavior::Serve(a.to_vec())]);
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    assert_eq!(c.server.count("/shim.tar.gz"), 1);
    let st = run_cmd(
        "status",
        &c.sb.settings,
        &c.sb.root,
        &["--output", "json", "--arch", "amd64"],
    );
    st.ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["shims"][0]["name"], "kwtest");
    assert_eq!(v["shims"][0]["binary_intact"], true);
}

#[test]
fn wrong_digest_installs_nothing_and_does_not_poison_the_cache() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let binary = fake_binary("x", 10_000);
    let archive = release(BIN, &binary);
    server.route("/shim.tar.gz", vec![Behavior::Serve(archive.clone())]);
    let wrong = "0".repeat(64);
    let spec = |sha: &str| {
        ShimSpec::new("kwtest", BIN).platform("amd64", &server.url("/shim.tar.gz"), Some(sha))
    };
    sb.write_settings(&artifact_settings("", &[spec(&wrong)]));
    let r = apply(&sb, &[]);
    r.failed();
    assert!(r.reason().contains("sha256 mismatch"), "{}", r.reason());
    assert!(r.reason().contains(&wrong), "{}", r.reason());
    assert_nothing_installed(&sb);
    assert!(sb.list("/opt/kwasm/cache/partial").is_empty());
    assert_eq!(
        server.count("/shim.tar.gz"),
        1,
        "a digest mismatch must not be retried"
    );
    // With the right pin the next apply downloads again and installs.
    sb.write_settings(&artifact_settings("", &[spec(&sha256(&archive))]));
    apply(&sb, &[]).ok();
    assert_eq!(std::fs::read(sb.bin(BIN)).unwrap(), binary);
}

#[test]
fn not_found_is_not_retried() {
    let c = case(|_| vec![Behavior::Status(404)]);
    let r = apply(&c.sb, &[]);
    r.failed();
    assert!(r.reason().contains("404"), "{}", r.reason());
    assert_eq!(c.server.count("/shim.tar.gz"), 1);
    assert_nothing_installed(&c.sb);
}

#[test]
fn server_error_then_success_installs() {
    let c = case(|a| {
        vec![
            Behavior::Status(500),
            Behavior::Status(503),
            Behavior::Serve(a.to_vec()),
        ]
    });
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    assert_eq!(c.server.count("/shim.tar.gz"), 3);
}

#[test]
fn persistent_server_error_gives_up_with_a_clear_error() {
    let c = case(|_| vec![Behavior::Status(500)]);
    let r = apply(&c.sb, &[]);
    r.failed();
    assert!(
        r.reason().contains("500") && r.reason().contains("giving up after 4 attempts"),
        "{}",
        r.reason()
    );
    assert_eq!(c.server.count("/shim.tar.gz"), 4);
    assert_nothing_installed(&c.sb);
}

#[test]
fn truncated_body_is_retried_and_resumed_with_a_range_request() {
    let c = case(|a| {
        vec![
            Behavior::Truncate {
                body: a.to_vec(),
                after: a.len() / 2,
            },
            Behavior::Serve(a.to_vec()),
        ]
    });
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    let reqs = c.server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={}-", c.archive.len() / 2).as_str())
    );
}

#[test]
fn truncated_body_without_range_support_starts_over() {
    let c = case(|a| {
        vec![
            Behavior::Truncate {
                body: a.to_vec(),
                after: 1000,
            },
            Behavior::NoRange(a.to_vec()),
        ]
    });
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
}

#[test]
fn always_truncated_body_fails_clearly_and_installs_nothing() {
    let c = case(|a| {
        vec![
            Behavior::Truncate {
                body: a.to_vec(),
                after: 10,
            },
            Behavior::Status(500),
        ]
    });
    let r = apply(&c.sb, &[]);
    r.failed();
    assert!(r.reason().contains("giving up"), "{}", r.reason());
    assert!(c.sb.list("/opt/kwasm/bin").is_empty());
}

#[test]
fn stalled_body_is_abandoned_and_retried() {
    let c = case(|a| {
        vec![
            Behavior::Stall {
                body: a.to_vec(),
                after: 5000,
            },
            Behavior::Serve(a.to_vec()),
        ]
    });
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    assert_eq!(c.server.count("/shim.tar.gz"), 2);
}

#[test]
fn always_stalled_body_fails_clearly() {
    let c = case(|a| {
        vec![Behavior::Stall {
            body: a.to_vec(),
            after: 100,
        }]
    });
    let r = apply(&c.sb, &[]);
    r.failed();
    assert!(
        r.reason().contains("giving up after 4 attempts"),
        "{}",
        r.reason()
    );
    assert!(c.sb.list("/opt/kwasm/bin").is_empty());
}

#[test]
fn redirects_are_followed() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let binary = fake_binary("r", 5000);
    let archive = release(BIN, &binary);
    server.route("/old", vec![Behavior::Redirect(server.url("/new"))]);
    server.route("/new", vec![Behavior::Serve(archive.clone())]);
    sb.write_settings(&artifact_settings(
        "",
        &[ShimSpec::new("kwtest", BIN).platform(
            "amd64",
            &server.url("/old"),
            Some(&sha256(&archive)),
        )],
    ));
    apply(&sb, &[]).ok();
    assert_eq!(std::fs::read(sb.bin(BIN)).unwrap(), binary);
}

#[test]
fn hostile_archives_are_refused() {
    let payload = fake_binary("h", 1000);
    let big = vec![0u8; 8 << 20];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            gzip(&tar(&[
                Entry::File("../../../etc/cron.d/x", b"evil"),
                Entry::File(BIN, &payload),
            ])),
            "escapes",
        ),
        (
            "absolute",
            gzip(&tar(&[
                Entry::File("/etc/passwd", b"evil"),
                Entry::File(BIN, &payload),
            ])),
            "absolute",
        ),
        (
            "symlink",
            gzip(&tar(&[Entry::Symlink(BIN, "/usr/bin/containerd")])),
            "symbolic link",
        ),
        (
            "device",
            gzip(&tar(&[Entry::CharDevice(BIN)])),
            "character device",
        ),
        (
            "bomb",
            gzip(&tar(&[Entry::File(BIN, &big)])),
            "decompression bomb",
        ),
        (
            "missing",
            gzip(&tar(&[Entry::File("other", &payload)])),
            "not found",
        ),
    ];
    for (what, archive, want) in cases {
        let sb = Sandbox::new();
        let server = ArtifactServer::start();
        server.route("/a", vec![Behavior::Serve(archive.clone())]);
        sb.write_settings(&artifact_settings(
            "max_size = \"1MiB\"\n",
            &[ShimSpec::new("kwtest", BIN).platform(
                "amd64",
                &server.url("/a"),
                Some(&sha256(&archive)),
            )],
        ));
        let r = apply(&sb, &[]);
        r.failed();
        assert!(
            r.reason().contains(want),
            "{what}: wanted {want:?} in {}",
            r.reason()
        );
        assert_nothing_installed(&sb);
        assert!(
            !sb.host("/etc/cron.d").exists() && !sb.host("/etc/passwd").exists(),
            "{what}: wrote outside the install dir"
        );
        assert_eq!(
            server.count("/a"),
            1,
            "{what}: a refused archive must not be retried"
        );
    }
}

#[test]
fn oversized_download_is_refused_before_reading_it() {
    let c = case(|a| vec![Behavior::Serve(a.to_vec())]);
    let text = std::fs::read_to_string(&c.sb.settings)
        .unwrap()
        .replace("attempts = 4\n", "attempts = 4\nmax_size = \"100KiB\"\n");
    c.sb.write_settings(&text);
    let r = apply(&c.sb, &[]);
    r.failed();
    assert!(r.reason().contains("max_size"), "{}", r.reason());
    assert_nothing_installed(&c.sb);
}

#[test]
fn node_architecture_picks_its_own_url() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let (amd, arm) = (fake_binary("amd64", 4000), fake_binary("arm64", 4000));
    let (amd_a, arm_a) = (release(BIN, &amd), release(BIN, &arm));
    server.route("/x86_64.tgz", vec![Behavior::Serve(amd_a.clone())]);
    server.route("/aarch64.tgz", vec![Behavior::Serve(arm_a.clone())]);
    sb.write_settings(&artifact_settings(
        "",
        &[ShimSpec::new("kwtest", BIN)
            .platform("x86_64", &server.url("/x86_64.tgz"), Some(&sha256(&amd_a)))
            .platform(
                "aarch64",
                &server.url("/aarch64.tgz"),
                Some(&sha256(&arm_a)),
            )],
    ));
    run_cmd("apply", &sb.settings, &sb.root, &["--arch", "arm64"]).ok();
    assert_eq!(std::fs::read(sb.bin(BIN)).unwrap(), arm);
    assert_eq!(server.count("/x86_64.tgz"), 0);
    assert_eq!(server.count("/aarch64.tgz"), 1);
}

#[test]
fn missing_platform_fails_that_shim_only() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("ok", 3000));
    let other = release("containerd-shim-other-v2", &fake_binary("o", 3000));
    server.route("/ok", vec![Behavior::Serve(archive.clone())]);
    sb.write_settings(&artifact_settings(
        "",
        &[
            ShimSpec::new("kwtest", BIN).platform(
                "amd64",
                &server.url("/ok"),
                Some(&sha256(&archive)),
            ),
            ShimSpec::new("other", "containerd-shim-other-v2").platform(
                "arm64",
                &server.url("/o"),
                Some(&sha256(&other)),
            ),
        ],
    ));
    let r = apply(&sb, &[]);
    r.failed();
    assert!(
        r.reason().contains("other") && r.reason().contains("no platform for architecture amd64"),
        "{}",
        r.reason()
    );
    assert!(
        sb.bin(BIN).exists(),
        "the shim that could be installed was not"
    );
}

#[test]
fn file_urls_install_without_a_server() {
    let sb = Sandbox::new();
    let binary = fake_binary("file", 20_000);
    let archive = release(BIN, &binary);
    let src = sb.path().join("mirror/shim.tar.gz");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    std::fs::write(&src, &archive).unwrap();
    sb.write_settings(&artifact_settings(
        "",
        &[ShimSpec::new("kwtest", BIN).platform(
            "amd64",
            &format!("file://{}", src.display()),
            Some(&sha256(&archive)),
        )],
    ));
    apply(&sb, &[]).ok();
    assert_eq!(std::fs::read(sb.bin(BIN)).unwrap(), binary);
}

#[test]
fn mirror_prefix_rewrite_is_used() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("m", 3000));
    server.route(
        "/gh/spin/v1/shim.tgz",
        vec![Behavior::Serve(archive.clone())],
    );
    let mirrors = format!(
        "mirrors = {{ \"https://github.com/\" = \"{}\" }}\n",
        server.url("/gh/")
    );
    sb.write_settings(&artifact_settings(
        &mirrors,
        &[ShimSpec::new("kwtest", BIN).platform(
            "amd64",
            "https://github.com/spin/v1/shim.tgz",
            Some(&sha256(&archive)),
        )],
    ));
    apply(&sb, &[]).ok();
    assert_eq!(server.count("/gh/spin/v1/shim.tgz"), 1);
}

#[test]
fn proxy_environment_is_honoured() {
    // The server doubles as the forward proxy: the request it receives carries the absolute URL of a
    // host that does not exist, which only a proxied request can reach.
    let sb = Sandbox::new();
    let proxy = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("p", 3000));
    proxy.route("/shim.tgz", vec![Behavior::Serve(archive.clone())]);
    sb.write_settings(&artifact_settings(
        "",
        &[ShimSpec::new("kwtest", BIN).platform(
            "amd64",
            "http://artifacts.invalid/shim.tgz",
            Some(&sha256(&archive)),
        )],
    ));
    let mut c = agent(&[
        "apply",
        "--config",
        sb.settings.to_str().unwrap(),
        "--host-root",
        sb.root.to_str().unwrap(),
        "--arch",
        "amd64",
    ]);
    c.env("HTTP_PROXY", proxy.url(""));
    output(c).ok();
    let reqs = proxy.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].target, "http://artifacts.invalid/shim.tgz");
    // NO_PROXY sends it direct (where the invalid host cannot resolve).
    let sb2 = Sandbox::new();
    std::fs::copy(&sb.settings, &sb2.settings).unwrap();
    let mut c = agent(&[
        "apply",
        "--config",
        sb2.settings.to_str().unwrap(),
        "--host-root",
        sb2.root.to_str().unwrap(),
        "--arch",
        "amd64",
    ]);
    c.env("HTTP_PROXY", proxy.url(""))
        .env("NO_PROXY", "artifacts.invalid");
    output(c).failed();
    assert_eq!(proxy.requests().len(), 1);
}

#[test]
fn plain_http_and_unpinned_artifacts_need_explicit_permission() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let archive = release(BIN, &fake_binary("u", 3000));
    server.route("/a", vec![Behavior::Serve(archive.clone())]);
    let shim = || {
        ShimSpec::new("kwtest", BIN).platform("amd64", &server.url("/a"), Some(&sha256(&archive)))
    };
    sb.write_settings(
        &artifact_settings("", &[shim()]).replace("allow_http = true", "allow_http = false"),
    );
    let r = apply(&sb, &[]);
    r.failed();
    assert!(r.reason().contains("allow_http"), "{}", r.reason());
    let unpinned = || ShimSpec::new("kwtest", BIN).platform("amd64", &server.url("/a"), None);
    sb.write_settings(&artifact_settings("", &[unpinned()]));
    let r = apply(&sb, &[]);
    r.failed();
    assert!(r.reason().contains("allow_unverified"), "{}", r.reason());
    assert_eq!(server.count("/a"), 0);
    sb.write_settings(&artifact_settings(
        "allow_unverified = true\n",
        &[unpinned()],
    ));
    apply(&sb, &[]).ok();
    apply(&sb, &[]).ok();
    assert_eq!(
        server.count("/a"),
        1,
        "an unverified artifact already installed is not fetched again"
    );
}

fn mtime(p: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn second_apply_makes_no_request_and_rewrites_nothing() {
    let c = case(|a| vec![Behavior::Serve(a.to_vec())]);
    apply(&c.sb, &[]).ok();
    let files = [
        c.sb.bin(BIN),
        c.sb.host("/opt/kwasm/state.json"),
        c.sb.host(&format!("/opt/kwasm/cache/sha256/{}", sha256(&c.archive))),
    ];
    let before: Vec<_> = files.iter().map(|f| mtime(f)).collect();
    c.server.clear_log();
    let r = apply(&c.sb, &[]);
    r.ok();
    assert!(r.stdout.contains("kwtest: unchanged"), "{}", r.stdout);
    assert_eq!(c.server.requests().len(), 0);
    let after: Vec<_> = files.iter().map(|f| mtime(f)).collect();
    assert_eq!(before, after);
    let plan = run_cmd("plan", &c.sb.settings, &c.sb.root, &["--arch", "amd64"]);
    plan.ok();
    assert!(
        plan.stdout.contains("shim kwtest: up to date"),
        "{}",
        plan.stdout
    );
}

#[test]
fn altered_binary_is_reinstalled_from_the_cache_without_a_download() {
    let c = case(|a| vec![Behavior::Serve(a.to_vec())]);
    apply(&c.sb, &[]).ok();
    std::fs::write(c.sb.bin(BIN), b"tampered").unwrap();
    let plan = run_cmd("plan", &c.sb.settings, &c.sb.root, &["--arch", "amd64"]);
    assert!(
        plan.stdout.contains("install from cache"),
        "{}",
        plan.stdout
    );
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    assert_eq!(c.server.count("/shim.tar.gz"), 1);
}

#[test]
fn two_shims_from_one_archive_download_it_once() {
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let (a, b) = (fake_binary("a", 5000), fake_binary("b", 5000));
    let archive = gzip(&tar(&[
        Entry::File("containerd-shim-a-v1", &a),
        Entry::File("containerd-shim-b-v1", &b),
    ]));
    server.route("/bundle.tgz", vec![Behavior::Serve(archive.clone())]);
    let d = sha256(&archive);
    sb.write_settings(&artifact_settings(
        "",
        &[
            ShimSpec::new("a", "containerd-shim-a-v1").platform(
                "amd64",
                &server.url("/bundle.tgz"),
                Some(&d),
            ),
            ShimSpec::new("b", "containerd-shim-b-v1").platform(
                "amd64",
                &server.url("/bundle.tgz"),
                Some(&d),
            ),
        ],
    ));
    apply(&sb, &[]).ok();
    assert_eq!(std::fs::read(sb.bin("containerd-shim-a-v1")).unwrap(), a);
    assert_eq!(std::fs::read(sb.bin("containerd-shim-b-v1")).unwrap(), b);
    assert_eq!(server.count("/bundle.tgz"), 1);
}

#[test]
fn shim_flag_selects_and_unknown_names_are_errors() {
    let c = case(|a| vec![Behavior::Serve(a.to_vec())]);
    let r = apply(&c.sb, &["--shim", "nope"]);
    r.failed();
    assert!(
        r.reason().contains("unknown shim \"nope\""),
        "{}",
        r.reason()
    );
    apply(&c.sb, &["--shim", "kwtest"]).ok();
    assert_installed(&c);
}

#[test]
fn concurrent_applies_serialise_on_the_host_lock() {
    let c = case(|a| {
        vec![Behavior::Slow {
            body: a.to_vec(),
            chunk: 64 << 10,
            pause: Duration::from_millis(20),
        }]
    });
    let spawn = || {
        let mut cmd = agent(&[
            "apply",
            "--config",
            c.sb.settings.to_str().unwrap(),
            "--host-root",
            c.sb.root.to_str().unwrap(),
            "--arch",
            "amd64",
        ]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_installed(&c);
    assert_eq!(
        c.server.count("/shim.tar.gz"),
        1,
        "the second agent should find the shim installed"
    );
}

#[test]
fn killed_mid_download_never_exposes_a_partial_binary_and_the_next_run_resumes() {
    let c = case(|a| {
        vec![Behavior::Slow {
            body: a.to_vec(),
            chunk: 16 << 10,
            pause: Duration::from_millis(25),
        }]
    });
    let mut child = agent(&[
        "apply",
        "--config",
        c.sb.settings.to_str().unwrap(),
        "--host-root",
        c.sb.root.to_str().unwrap(),
        "--arch",
        "amd64",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let partial = c.sb.host(&format!(
        "/opt/kwasm/cache/partial/{}.part",
        sha256(&c.archive)
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            !c.sb.bin(BIN).exists(),
            "binary visible before the download finished"
        );
        if std::fs::metadata(&partial)
            .map(|m| m.len() > 64 << 10)
            .unwrap_or(false)
        {
            break;
        }
        assert!(Instant::now() < deadline, "download never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(!c.sb.bin(BIN).exists());
    assert!(
        c.sb.list("/opt/kwasm/bin").is_empty(),
        "{:?}",
        c.sb.list("/opt/kwasm/bin")
    );
    let had = std::fs::metadata(&partial).unwrap().len();
    c.server
        .route("/shim.tar.gz", vec![Behavior::Serve(c.archive.clone())]);
    c.server.clear_log();
    apply(&c.sb, &[]).ok();
    assert_installed(&c);
    let reqs = c.server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].range.as_deref(),
        Some(format!("bytes={had}-").as_str()),
        "the next run should resume"
    );
    assert!(c.sb.list("/opt/kwasm/cache/staging").is_empty());
}

#[test]
fn settings_errors_name_the_file_and_key() {
    let sb = Sandbox::new();
    sb.write_settings("[artifacts]\nmax_size = \"lots\"\n");
    let r = run_cmd("apply", &sb.settings, &sb.root, &[]);
    r.failed();
    assert!(
        r.reason().contains(sb.settings.to_str().unwrap()) && r.reason().contains("max_size"),
        "{}",
        r.reason()
    );
    let r = run_cmd("apply", &sb.path().join("missing.toml"), &sb.root, &[]);
    r.failed();
    assert!(r.reason().contains("missing.toml"), "{}", r.reason());
}

#[test]
fn https_with_a_private_ca_is_trusted_only_through_ca_bundle() {
    use kwasm_tests::tls_server::TlsServer;
    let sb = Sandbox::new();
    let binary = fake_binary("tls", 50_000);
    let archive = release(BIN, &binary);
    let server = TlsServer::start("/shim.tar.gz", archive.clone());
    let shim = || {
        ShimSpec::new("kwtest", BIN).platform(
            "amd64",
            &server.url("/shim.tar.gz"),
            Some(&sha256(&archive)),
        )
    };
    // Plain https, as in production (no allow_http), with a CA the agent does not know: refused.
    let strict =
        artifact_settings("", &[shim()]).replace("allow_http = true", "allow_http = false");
    sb.write_settings(&strict);
    let r = apply(&sb, &[]);
    r.failed();
    assert!(
        r.reason().contains("is not trusted") && r.reason().contains("ca_bundle"),
        "{}",
        r.reason()
    );
    assert_eq!(server.served(), 0);
    assert_eq!(
        server.connections(),
        1,
        "an untrusted certificate must not be retried"
    );
    assert!(sb.list("/opt/kwasm/bin").is_empty());
    // The private CA through artifacts.ca_bundle (a host path under the host root): installed.
    std::fs::create_dir_all(sb.host("/etc/kwasm")).unwrap();
    std::fs::write(sb.host("/etc/kwasm/mirror-ca.pem"), &server.ca_pem).unwrap();
    sb.write_settings(&strict.replace(
        "attempts = 4\n",
        "attempts = 4\nca_bundle = \"/etc/kwasm/mirror-ca.pem\"\n",
    ));
    apply(&sb, &[]).ok();
    assert_eq!(std::fs::read(sb.bin(BIN)).unwrap(), binary);
    assert_eq!(server.served(), 1);
}

#[test]
fn a_verified_binary_that_does_not_start_on_this_host_is_never_installed() {
    // Pinned and verified, but not a program this host can run (another architecture's build, say):
    // the agent runs it as the host before installing it, and refuses it.
    let sb = Sandbox::new();
    let server = ArtifactServer::start();
    let not_runnable = b"\x7fELF\x02\x01\x01\0 not for this machine".repeat(100);
    let archive = release(BIN, &not_runnable);
    server.route("/shim.tar.gz", vec![Behavior::Serve(archive.clone())]);
    let shim = ShimSpec::new("kwtest", BIN).platform(
        "amd64",
        &server.url("/shim.tar.gz"),
        Some(&sha256(&archive)),
    );
    sb.write_settings(&artifact_settings("", &[shim]));
    let config = std::fs::read(sb.host("/etc/containerd/config.toml")).unwrap();
    let r = apply(&sb, &[]);
    r.failed();
    assert!(
        r.reason().contains("does not start on this host"),
        "{}",
        r.reason()
    );
    assert!(
        sb.list("/opt/kwasm/bin").is_empty(),
        "{:?}",
        sb.list("/opt/kwasm/bin")
    );
    assert!(sb.list("/opt/kwasm/cache/staging").is_empty());
    assert_eq!(
        std::fs::read(sb.host("/etc/containerd/config.toml")).unwrap(),
        config,
        "containerd's config was changed for a shim that cannot start"
    );
    let state = std::fs::read_to_string(sb.host("/opt/kwasm/state.json")).unwrap_or_default();
    assert!(!state.contains("kwtest"), "{state}");
}
