//! Property tests (proptest) over the three parsers of untrusted input:
//! - the containerd config editor: any document never panics it; on a document it accepts, apply then
//!   remove gives the input back byte for byte;
//! - the unpacker: any bytes, and generated archives of any shape, never panic it, and it never
//!   writes more than allowed;
//! - the settings parser: any text never panics it.
//!
//! A short run is part of the test suite; `scripts/fuzz.sh --minutes 10` runs each for longer with new
//! seeds (docs/reliability.md records the last long run).

use std::path::{Path, PathBuf};

use kwasm_agent::containerd::config::{ContainerdVersion, RuntimeEntry};
use kwasm_agent::containerd::edit::{compute, ConfigEdit, ConfigFacts};
use kwasm_agent::containerd::flavor::{Flavor, Kind};
use proptest::prelude::*;

const MAIN: &str = "/etc/containerd/config.toml";
const FIXTURES: &[&str] = &[
    include_str!("../../agent/fixtures/containerd/containerd-1.6-default.toml"),
    include_str!("../../agent/fixtures/containerd/containerd-2.0-default.toml"),
    include_str!("../../agent/fixtures/containerd/containerd-2.2-default.toml"),
    include_str!("../../agent/fixtures/containerd/containerd-2.3-v4.toml"),
    include_str!("../../agent/fixtures/containerd/docker-containerd.toml"),
];

fn flavor() -> Flavor {
    Flavor {
        kind: Kind::Containerd,
        config: MAIN.into(),
        socket: "/run/containerd/containerd.sock".into(),
        unit: "containerd".into(),
        unit_alternatives: vec![],
        binary: None,
    }
}

fn entries() -> Vec<RuntimeEntry> {
    ["spin", "wasmtime"]
        .iter()
        .map(|h| RuntimeEntry {
            handler: (*h).into(),
            runtime_type: format!("io.containerd.{h}.v1"),
            binary: PathBuf::from(format!("/opt/kwasm/bin/containerd-shim-{h}-v1")),
            options: Some(toml::toml! { SystemdCgroup = true }),
        })
        .collect()
}

fn facts(doc: &str, containerd: Option<(u32, u32)>) -> ConfigFacts {
    let mut f = ConfigFacts::default();
    f.files.insert(MAIN.into(), Some(doc.to_owned()));
    f.containerd = containerd.map(|(major, minor)| ContainerdVersion { major, minor });
    f
}

fn carry(f: &mut ConfigFacts, edit: &ConfigEdit) {
    for w in &edit.writes {
        if let Some(b) = &w.before {
            f.backups.entry(w.path.clone()).or_insert_with(|| b.clone());
        }
        f.files.insert(w.path.clone(), w.after.clone());
    }
}

/// A TOML value of some depth: scalars, arrays, inline tables.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
        (-1e9f64..1e9).prop_map(|f| format!("{f:?}")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,6}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

/// Keys of the shapes containerd configs have (quoted plugin names included).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,10}",
        Just("\"io.containerd.grpc.v1.cri\"".to_owned()),
        Just("\"io.containerd.cri.v1.runtime\"".to_owned()),
        Just("containerd.runtimes".to_owned()),
        Just("runtimes.runc".to_owned()),
    ]
}

/// A document as operators write them: comments, blank lines, tables, arrays of tables, dotted keys.
fn document() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        ("[a-z_]{1,8}", value()).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::collection::vec(key(), 1..4).prop_map(|ks| format!("[{}]", ks.join("."))),
        prop::collection::vec(key(), 1..3).prop_map(|ks| format!("[[{}]]", ks.join("."))),
        "#[ -~]{0,30}".prop_map(|c| c),
        Just(String::new()),
        ("  ", "[a-z]{1,5}", value()).prop_map(|(i, k, v)| format!("{i}{k}={v}   # note")),
    ];
    (
        prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(0)],
        prop::collection::vec(line, 0..40),
    )
        .prop_map(|(version, lines)| {
            let head = if version == 0 {
                String::new()
            } else {
                format!("version = {version}\n")
            };
            format!("{head}{}\n", lines.join("\n"))
        })
}

/// A fixture with lines inserted: operators' comments and keys between containerd's.
fn edited_fixture() -> impl Strategy<Value = String> {
    (
        0..FIXTURES.len(),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                "#[ -~]{0,20}|[a-z]{1,6} = [0-9]{1,4}",
            ),
            0..6,
        ),
    )
        .prop_map(|(i, inserts)| {
            let mut lines: Vec<String> = FIXTURES[i].lines().map(str::to_owned).collect();
            for (at, text) in inserts {
                // Before a table header only, so an inserted key never lands in a table it would
                // conflict with.
                let headers: Vec<usize> = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.trim_start().starts_with('['))
                    .map(|(n, _)| n)
                    .collect();
                if let Some(h) = headers.get(at.index(headers.len().max(1))) {
                    lines.insert(*h, text);
                }
            }
            lines.join("\n") + "\n"
        })
}

/// Documents the editor accepted, so a property that holds only because everything was refused
/// is caught (see `most_generated_documents_are_accepted`).
static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn round_trip(doc: &str, containerd: Option<(u32, u32)>) -> Result<(), TestCaseError> {
    let fl = flavor();
    let mut f = facts(doc, containerd);
    let Ok(apply) = compute(&fl, &f, None, &entries()) else {
        return Ok(()); // refused: an error, not a panic, is all that is asked
    };
    ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    carry(&mut f, &apply);
    let edited = f.file(Path::new(MAIN)).unwrap_or_default().to_owned();
    // Applying again changes nothing.
    let again = compute(&fl, &f, apply.ownership.as_ref(), &entries())
        .map_err(|e| TestCaseError::fail(format!("second apply refused: {e:#}\n{edited}")))?;
    prop_assert!(
        !again.changes(),
        "a second apply changes the config:\n{edited}"
    );
    let remove = compute(&fl, &f, apply.ownership.as_ref(), &[])
        .map_err(|e| TestCaseError::fail(format!("remove refused: {e:#}\n{edited}")))?;
    carry(&mut f, &remove);
    prop_assert_eq!(
        f.file(Path::new(MAIN)),
        Some(doc),
        "apply then remove is not the identity"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn config_editor_never_panics_on_any_text(doc in "(?s).{0,600}", v in prop::option::of((1u32..3, 0u32..8))) {
        let _ = compute(&flavor(), &facts(&doc, v), None, &entries());
    }

    #[test]
    fn config_editor_apply_then_remove_is_byte_identical_on_generated_documents(doc in document(), v in prop::option::of((1u32..3, 0u32..8))) {
        round_trip(&doc, v)?;
    }

    #[test]
    fn config_editor_apply_then_remove_is_byte_identical_on_edited_fixtures(doc in edited_fixture(), v in prop::option::of((1u32..3, 0u32..8))) {
        round_trip(&doc, v)?;
    }

    #[test]
    fn unpacker_never_panics_nor_writes_more_than_allowed(bytes in prop::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>(), max in 1u64..8192) {
        let input = if gz { kwasm_tests::archive::gzip(&bytes) } else { bytes };
        let mut out = Vec::new();
        if let Ok(u) = kwasm_agent::artifact::unpack::unpack(&input[..], "shim", &["shim.sig".to_owned()], &mut out, max) {
            prop_assert_eq!(u.size, out.len() as u64);
        }
        prop_assert!(out.len() as u64 <= max);
    }

    #[test]
    fn unpacker_never_panics_on_archives_of_any_shape(entries in prop::collection::vec(archive_entry(), 0..6), gz in any::<bool>(), max in 1u64..65536) {
        let tar = tar_of(&entries);
        let input = if gz { kwasm_tests::archive::gzip(&tar) } else { tar };
        let mut out = Vec::new();
        let r = kwasm_agent::artifact::unpack::unpack(&input[..], "shim", &["shim.sig".to_owned()], &mut out, max);
        prop_assert!(out.len() as u64 <= max);
        if let (Ok(u), false) = (r, entries.is_empty()) {
            // (No entry at all is no tar: 1 KiB of zeros is then taken as a bare binary.)
            // Taken only from a regular file named shim, never through a link or a parent directory.
            prop_assert!(entries.iter().any(|(name, kind, _)| *kind == 0 && name.rsplit('/').next() == Some("shim") && !name.split('/').any(|c| c == "..") && !name.starts_with('/')));
            prop_assert_eq!(u.size, out.len() as u64);
        }
    }

    #[test]
    fn settings_parser_never_panics_on_any_text(text in "(?s).{0,400}") {
        let _ = kwasm_agent::settings::Settings::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn settings_parser_never_panics_on_settings_shaped_text(text in settings_text()) {
        let _ = kwasm_agent::settings::Settings::parse(&text, Path::new("fuzz.toml"));
    }
}

#[test]
fn most_generated_documents_are_accepted() {
    // The round-trip properties say something only about documents the editor takes.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let before = ACCEPTED.load(std::sync::atomic::Ordering::Relaxed);
    let seen = std::cell::Cell::new(0usize);
    runner
        .run(&(document(), edited_fixture()), |(generated, edited)| {
            seen.set(seen.get() + 2);
            round_trip(&generated, Some((1, 7)))?;
            round_trip(&edited, Some((2, 0)))
        })
        .unwrap();
    let accepted = ACCEPTED.load(std::sync::atomic::Ordering::Relaxed) - before;
    let seen = seen.get();
    eprintln!("accepted {accepted} of {seen} generated documents");
    assert!(
        accepted * 4 >= seen,
        "only {accepted} of {seen} documents were accepted"
    );
}

/// Cases per property: `PROPTEST_CASES` overrides (scripts/fuzz.sh), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (path, kind: 0 file / 1 symlink / 2 hard link / 3 dir / 4 char device, content)
fn archive_entry() -> impl Strategy<Value = (String, u8, Vec<u8>)> {
    (
        prop_oneof![
            Just("shim".to_owned()),
            Just("shim.sig".to_owned()),
            Just("a/shim".to_owned()),
            Just("../shim".to_owned()),
            Just("/shim".to_owned()),
            Just("./shim".to_owned()),
            "[a-z./]{1,12}",
        ],
        0u8..5,
        prop::collection::vec(any::<u8>(), 0..2048),
    )
}

fn tar_of(entries: &[(String, u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        let (t, body): (tar::EntryType, &[u8]) = match kind {
            0 => (tar::EntryType::Regular, data),
            1 => (tar::EntryType::Symlink, b""),
            2 => (tar::EntryType::Link, b""),
            3 => (tar::EntryType::Directory, b""),
            _ => (tar::EntryType::Char, b""),
        };
        h.set_entry_type(t);
        if matches!(kind, 1 | 2) {
            let _ = h.set_link_name("target");
        }
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    b.into_inner().unwrap()
}

fn settings_text() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("[host]"),
        Just("[trigger]"),
        Just("[agent]"),
        Just("[artifacts]"),
        Just("[containerd]"),
        Just("[fleet]"),
        Just("[[shims]]"),
        Just("[[shims.platforms]]"),
        Just("[shims.verify]"),
    ];
    let key = prop_oneof![
        Just("root"),
        Just("install_dir"),
        Just("annotation"),
        Just("startup_taint"),
        Just("listen"),
        Just("resync"),
        Just("max_backoff"),
        Just("max_size"),
        Just("attempts"),
        Just("timeout"),
        Just("restart"),
        Just("config"),
        Just("max_concurrent_restarts"),
        Just("lease_duration"),
        Just("name"),
        Just("runtime_type"),
        Just("binary"),
        Just("version"),
        Just("arch"),
        Just("url"),
        Just("sha256"),
        Just("identity_regexp"),
        Just("issuer"),
        Just("public_key"),
        Just("mirrors"),
    ];
    let val = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        "[ -~]{0,20}".prop_map(|s| toml::Value::String(s).to_string()),
        "[0-9]{1,25}(s|ms|m|h|d|KiB|MiB|GiB|%)".prop_map(|s| format!("\"{s}\"")),
        Just("[\"/bin/sh\", \"-c\", \"true\"]".to_owned()),
        Just("{ \"https://a/\" = \"https://b/\" }".to_owned()),
    ];
    prop::collection::vec((section, prop::collection::vec((key, val), 0..5)), 0..8).prop_map(
        |secs| {
            secs.iter()
                .map(|(s, kv)| {
                    let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{s}\n{}", body.join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
}
