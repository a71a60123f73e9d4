//! The planner over fixture files modelled on each project's default config: the flavors no containerd
//! installable here can run (k3s, rke2, k0s, microk8s, containerd 2.0/2.2/2.3) and the edge cases.
//! Real platforms' configs go through the releases that are here (1.6, 1.7, 2.1) in
//! tests/tests/real_configs.rs.

use std::path::{Path, PathBuf};

use super::*;
use crate::containerd::flavor::{Flavor, Kind};

const V16: &str = include_str!("../../fixtures/containerd/containerd-1.6-default.toml");
const V20: &str = include_str!("../../fixtures/containerd/containerd-2.0-default.toml");
const V22: &str = include_str!("../../fixtures/containerd/containerd-2.2-default.toml");
const V4: &str = include_str!("../../fixtures/containerd/containerd-2.3-v4.toml");
const K3S: &str = include_str!("../../fixtures/containerd/k3s-config.toml");
const K3S_V3: &str = include_str!("../../fixtures/containerd/k3s-v3-config.toml");
const K0S_CRI: &str = include_str!("../../fixtures/containerd/k0s-containerd-cri.toml");
const MICROK8S: &str = include_str!("../../fixtures/containerd/microk8s-containerd-template.toml");
const DOCKER: &str = include_str!("../../fixtures/containerd/docker-containerd.toml");

const MAIN: &str = "/etc/containerd/config.toml";
const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";

fn flavor(kind: Kind, config: &str) -> Flavor {
    Flavor {
        kind,
        config: config.into(),
        socket: "/run/c.sock".into(),
        unit: "u".into(),
        unit_alternatives: vec![],
        binary: None,
    }
}

fn facts(files: &[(&str, &str)]) -> ConfigFacts {
    let mut f = ConfigFacts::default();
    for (p, c) in files {
        f.files.insert(PathBuf::from(p), Some(c.to_string()));
    }
    f
}

fn entry(handler: &str, dir: &str) -> RuntimeEntry {
    RuntimeEntry {
        handler: handler.into(),
        runtime_type: format!("io.containerd.{handler}.v2"),
        binary: Path::new(dir).join(format!("containerd-shim-{handler}-v2")),
        options: None,
    }
}

const C16: Option<ContainerdVersion> = Some(ContainerdVersion { major: 1, minor: 6 });
const C17: Option<ContainerdVersion> = Some(ContainerdVersion { major: 1, minor: 7 });

fn on(mut f: ConfigFacts, containerd: Option<ContainerdVersion>) -> ConfigFacts {
    f.containerd = containerd;
    f
}

/// Carry the writes out on the in-memory host, keeping backups of originals as the engine does.
fn carry(f: &mut ConfigFacts, plan: &ConfigEdit) {
    for w in &plan.writes {
        if let Some(b) = &w.before {
            f.backups.entry(w.path.clone()).or_insert_with(|| b.clone());
        }
        f.files.insert(w.path.clone(), w.after.clone());
    }
}

fn text<'a>(f: &'a ConfigFacts, p: &str) -> &'a str {
    f.file(Path::new(p))
        .unwrap_or_else(|| panic!("{p} missing"))
}

fn assert_lines_kept(original: &str, edited: &str) {
    let mut it = original.lines().peekable();
    for l in edited.lines() {
        if it.peek() == Some(&l) {
            it.next();
        }
    }
    assert!(
        it.peek().is_none(),
        "original lines lost or reordered:\n{edited}"
    );
}

#[test]
fn containerd_1_6_is_edited_in_place_and_restored_byte_for_byte() {
    let fl = flavor(Kind::Containerd, MAIN);
    let mut f = on(facts(&[(MAIN, V16)]), C16);
    let desired = [entry("spin", "/opt/kwasm/bin")];
    let plan = super::compute(&fl, &f, None, &desired).unwrap();
    assert_eq!(plan.strategy, Strategy::InPlace { file: MAIN.into() });
    assert_eq!(plan.writes.len(), 1);
    carry(&mut f, &plan);
    let edited = text(&f, MAIN).to_owned();
    assert_lines_kept(V16, &edited);
    assert!(edited.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]"));
    assert!(
        edited.contains("runtime_type = \"/opt/kwasm/bin/containerd-shim-spin-v2\""),
        "containerd starts the installed binary by its path: {edited}"
    );
    let doc: toml::Table = toml::from_str(&edited).unwrap();
    let spin = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["spin"]
        .as_table()
        .unwrap();
    assert_eq!(
        spin.keys().collect::<Vec<_>>(),
        ["runtime_type"],
        "no runtime_path: the sandbox's shim would not honour it"
    );
    assert!(
        !edited.contains("runtimes.spin.options]"),
        "containerd 1.6 sends non-runc shims an empty options body that runwasi refuses: {edited}"
    );
    // Idempotent.
    let again = super::compute(&fl, &f, plan.ownership.as_ref(), &desired).unwrap();
    assert!(!again.changes());
    // Removal restores the exact original.
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert_eq!(text(&f, MAIN), V16);
    assert!(rm.ownership.is_none());
}

#[test]
fn operator_edits_after_apply_survive_removal() {
    let fl = flavor(Kind::Containerd, MAIN);
    let mut f = facts(&[(MAIN, V16)]);
    let plan = super::compute(
        &fl,
        &f,
        None,
        &[
            entry("spin", "/opt/kwasm/bin"),
            entry("wasmtime", "/opt/kwasm/bin"),
        ],
    )
    .unwrap();
    carry(&mut f, &plan);
    let user = text(&f, MAIN).replace("oom_score = 0", "# tuned\noom_score = -999");
    f.files.insert(MAIN.into(), Some(user));
    // Remove one shim, then the other.
    let one = super::compute(
        &fl,
        &f,
        plan.ownership.as_ref(),
        &[entry("wasmtime", "/opt/kwasm/bin")],
    )
    .unwrap();
    carry(&mut f, &one);
    assert!(
        !text(&f, MAIN).contains("runtimes.spin]") && text(&f, MAIN).contains("runtimes.wasmtime]")
    );
    let all = super::compute(&fl, &f, one.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &all);
    assert_eq!(
        text(&f, MAIN),
        V16.replace("oom_score = 0", "# tuned\noom_score = -999")
    );
}

#[test]
fn containerd_2_uses_a_drop_in_and_an_import_removed_in_reverse_order() {
    for (fixture, version) in [(V20, 3), (V4, 4)] {
        let fl = flavor(Kind::Containerd, MAIN);
        let mut f = facts(&[(MAIN, fixture)]);
        let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
        let drop_in = "/etc/containerd/conf.d/99-kwasm.toml";
        let paths: Vec<_> = plan
            .writes
            .iter()
            .map(|w| w.path.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            [drop_in, MAIN],
            "drop-in first, then the import naming it"
        );
        carry(&mut f, &plan);
        let d = text(&f, drop_in);
        assert!(d.contains(&format!("version = {version}\n")), "{d}");
        assert!(
            d.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.spin]"),
            "{d}"
        );
        assert!(
            d.contains("SystemdCgroup = true"),
            "inherits SystemdCgroup from the main config: {d}"
        );
        assert!(
            text(&f, MAIN).contains("imports = [\"/etc/containerd/conf.d/99-kwasm.toml\"]"),
            "{}",
            text(&f, MAIN)
        );
        assert_lines_kept(&fixture.replace("imports = []\n", ""), text(&f, MAIN));
        let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
        let paths: Vec<_> = rm
            .writes
            .iter()
            .map(|w| w.path.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            [MAIN, drop_in],
            "the import goes before the file it names"
        );
        carry(&mut f, &rm);
        assert_eq!(text(&f, MAIN), fixture);
        assert!(f.file(Path::new(drop_in)).is_none());
    }
}

#[test]
fn containerd_2_2_default_import_is_used_as_is() {
    let fl = flavor(Kind::Containerd, MAIN);
    let mut f = facts(&[(MAIN, V22)]);
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
    assert_eq!(
        plan.writes.len(),
        1,
        "config.toml already imports conf.d/*.toml"
    );
    carry(&mut f, &plan);
    assert_eq!(text(&f, MAIN), V22);
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert!(f
        .file(Path::new("/etc/containerd/conf.d/99-kwasm.toml"))
        .is_none());
    assert_eq!(text(&f, MAIN), V22);
}

#[test]
fn unknown_versions_and_docker_containerd_are_refused() {
    let fl = flavor(Kind::Containerd, MAIN);
    let e = super::compute(
        &fl,
        &facts(&[(MAIN, "version = 5\n")]),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("version 5 is not supported"), "{e}");
    let e = super::compute(
        &fl,
        &facts(&[(MAIN, DOCKER)]),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("disables the CRI plugin"), "{e}");
}

#[test]
fn missing_config_is_created_and_removed_again() {
    let fl = flavor(Kind::Containerd, MAIN);
    // containerd 2.x: a file with the version and our runtime is enough.
    let mut f = ConfigFacts {
        containerd: Some(ContainerdVersion { major: 2, minor: 0 }),
        ..Default::default()
    };
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
    carry(&mut f, &plan);
    assert!(text(&f, MAIN).starts_with("version = 3\n"));
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert!(f.file(Path::new(MAIN)).is_none());
    // containerd 1.x: start from the binary's defaults so the default runtime still exists.
    let mut f = ConfigFacts {
        containerd: C16,
        default_config: Some(V16.into()),
        ..Default::default()
    };
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
    carry(&mut f, &plan);
    assert_lines_kept(V16, text(&f, MAIN));
    // Nothing to ask: a clear error.
    let e = super::compute(
        &fl,
        &ConfigFacts::default(),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn handlers_configured_by_someone_else_are_not_taken_over() {
    let fl = flavor(Kind::Containerd, MAIN);
    let theirs = format!("{V16}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]\n  runtime_type = \"io.containerd.spin.v2\"\n");
    let e = super::compute(
        &fl,
        &facts(&[(MAIN, &theirs)]),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("already configured") && e.to_string().contains("someone else"),
        "{e}"
    );
    // A table pointing at our binary was written by a run killed before it saved state: adopted.
    let ours = format!("{theirs}  runtime_path = \"/opt/kwasm/bin/containerd-shim-spin-v2\"\n");
    let plan = super::compute(
        &fl,
        &facts(&[(MAIN, &ours)]),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap();
    assert!(plan.ownership.unwrap().handlers.contains_key("spin"));
    let ours = format!("{V16}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]\n  runtime_type = \"/opt/kwasm/bin/containerd-shim-spin-v2\"\n");
    let plan = super::compute(
        &fl,
        &facts(&[(MAIN, &ours)]),
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap();
    assert!(plan.ownership.unwrap().handlers.contains_key("spin"));
}

#[test]
fn k3s_without_drop_in_dirs_gets_a_template_block() {
    let rendered = format!("{K3S_DIR}/config.toml");
    let tmpl = format!("{K3S_DIR}/config.toml.tmpl");
    let fl = flavor(Kind::K3s, &rendered);
    let mut f = on(facts(&[(&rendered, K3S)]), C17);
    let e = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap_err();
    assert!(
        e.to_string().contains("install_dir"),
        "k3s auto-adds shims from /opt/kwasm/bin: {e}"
    );
    let desired = [entry("spin", "/var/lib/kwasm/bin")];
    let plan = super::compute(&fl, &f, None, &desired).unwrap();
    assert_eq!(
        plan.strategy,
        Strategy::Template {
            file: tmpl.clone().into(),
            rendered: rendered.clone().into()
        }
    );
    carry(&mut f, &plan);
    let t = text(&f, &tmpl);
    assert!(t.starts_with(super::template::BASE), "{t}");
    assert!(
        t.contains("runtimes.spin]") && t.contains("SystemdCgroup = true"),
        "{t}"
    );
    let (path, effective) = plan.effective_config.clone().unwrap();
    assert_eq!(path, PathBuf::from(&rendered));
    assert!(effective.starts_with(K3S) && effective.contains("runtimes.spin]"));
    effective
        .parse::<DocumentMut>()
        .expect("the rendered result is valid TOML");
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert!(
        f.file(Path::new(&tmpl)).is_none(),
        "the template the agent created is gone"
    );
    assert_eq!(
        text(&f, &rendered),
        K3S,
        "the rendered file is k3s's, never written"
    );
}

#[test]
fn k3s_with_an_operator_template_keeps_it() {
    let rendered = format!("{K3S_DIR}/config.toml");
    let tmpl = format!("{K3S_DIR}/config.toml.tmpl");
    let user_tmpl = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/k3s-certs.d\"\n";
    let fl = flavor(Kind::K3s, &rendered);
    let mut f = facts(&[(&rendered, K3S), (&tmpl, user_tmpl)]);
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/var/lib/kwasm/bin")]).unwrap();
    carry(&mut f, &plan);
    assert!(text(&f, &tmpl).starts_with(user_tmpl));
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert_eq!(text(&f, &tmpl), user_tmpl);
}

#[test]
fn k3s_and_rke2_drop_in_dirs_are_preferred() {
    let rendered = format!("{K3S_DIR}/config.toml");
    let fl = flavor(Kind::K3s, &rendered);
    let mut f = facts(&[(&rendered, K3S_V3)]);
    f.dirs.insert(format!("{K3S_DIR}/config-v3.toml.d").into());
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
    let file = PathBuf::from(format!("{K3S_DIR}/config-v3.toml.d/99-kwasm.toml"));
    assert_eq!(
        plan.strategy,
        Strategy::DropIn {
            file: file.clone(),
            importer: None,
            version: ConfigVersion(3)
        }
    );
    assert_eq!(plan.writes.len(), 1);
    assert!(plan.writes[0]
        .after
        .as_ref()
        .unwrap()
        .contains("version = 3"));
    // rke2, v2, config.toml.d
    let rdir = "/var/lib/rancher/rke2/agent/etc/containerd";
    let rendered = format!("{rdir}/config.toml");
    let mut f = facts(&[(&rendered, K3S)]);
    f.dirs.insert(format!("{rdir}/config.toml.d").into());
    let plan = super::compute(
        &flavor(Kind::Rke2, &rendered),
        &f,
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap();
    assert!(
        matches!(&plan.strategy, Strategy::DropIn { file, .. } if file.starts_with(format!("{rdir}/config.toml.d")))
    );
    // rke2 without drop-in dirs: template next to its rendered config.
    let f = facts(&[(&rendered, K3S)]);
    let plan = super::compute(
        &flavor(Kind::Rke2, &rendered),
        &f,
        None,
        &[entry("spin", "/var/lib/kwasm/bin")],
    )
    .unwrap();
    assert!(
        matches!(&plan.strategy, Strategy::Template { file, .. } if file.as_path() == Path::new(&format!("{rdir}/config.toml.tmpl")))
    );
}

#[test]
fn k0s_gets_a_drop_in_in_its_directory() {
    let dropin = "/etc/k0s/containerd.d/kwasm.toml";
    let fl = flavor(Kind::K0s, dropin);
    let mut f = facts(&[("/run/k0s/containerd-cri.toml", K0S_CRI)]);
    let plan = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap();
    assert_eq!(plan.writes.len(), 1);
    carry(&mut f, &plan);
    let d = text(&f, dropin);
    assert!(
        d.contains("version = 2")
            && d.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]"),
        "{d}"
    );
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert!(f.file(Path::new(dropin)).is_none());
}

#[test]
fn microk8s_template_is_edited_in_place_with_its_comments() {
    let t = "/var/snap/microk8s/current/args/containerd-template.toml";
    let fl = flavor(Kind::Microk8s, t);
    let mut f = facts(&[(t, MICROK8S)]);
    let e = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap_err();
    assert!(e.to_string().contains("/var/snap/microk8s/common"), "{e}");
    let plan = super::compute(
        &fl,
        &f,
        None,
        &[entry("spin", "/var/snap/microk8s/common/kwasm/bin")],
    )
    .unwrap();
    carry(&mut f, &plan);
    assert_lines_kept(MICROK8S, text(&f, t));
    assert!(text(&f, t).contains("runtimes.spin]"));
    let rm = super::compute(&fl, &f, plan.ownership.as_ref(), &[]).unwrap();
    carry(&mut f, &rm);
    assert_eq!(text(&f, t), MICROK8S);
}

#[test]
fn a_drop_in_someone_else_wrote_is_not_overwritten() {
    let fl = flavor(Kind::Containerd, MAIN);
    let f = facts(&[
        (MAIN, V22),
        ("/etc/containerd/conf.d/99-kwasm.toml", "version = 3\n"),
    ]);
    let e = super::compute(&fl, &f, None, &[entry("spin", "/opt/kwasm/bin")]).unwrap_err();
    assert!(e.to_string().contains("not written by kwasm-agent"), "{e}");
}

#[test]
fn options_are_written_the_way_each_containerd_passes_them_to_a_shim() {
    let fl = flavor(Kind::Containerd, MAIN);
    let mut spin = entry("spin", "/opt/kwasm/bin");
    spin.options = Some(toml::toml! { ConfigLevel = "debug" });
    let options_of = |f: &ConfigFacts| {
        let plan = super::compute(&fl, f, None, std::slice::from_ref(&spin)).unwrap();
        let after = plan.writes[0].after.clone().unwrap();
        let doc: toml::Table = toml::from_str(&after).unwrap();
        let opts = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["spin"]
            .get("options")
            .cloned();
        (opts, plan.notes)
    };
    // 1.7: the table's TOML is the shim's config body; runwasi needs SystemdCgroup in it, inherited
    // from the default runtime so pods keep the node's cgroup driver.
    let (opts, notes) = options_of(&on(facts(&[(MAIN, V16)]), C17));
    let opts = opts.expect("an options table on 1.7");
    assert_eq!(opts["SystemdCgroup"].as_bool(), Some(false));
    assert_eq!(opts["ConfigLevel"].as_str(), Some("debug"));
    assert!(notes.is_empty(), "{notes:?}");
    // 1.6, or a version 2 config whose containerd cannot be asked: no table, and the plan says why.
    for version in [C16, None] {
        let (opts, notes) = options_of(&on(facts(&[(MAIN, V16)]), version));
        assert!(opts.is_none(), "{version:?}");
        assert!(
            notes.len() == 1 && notes[0].contains("options not written"),
            "{notes:?}"
        );
    }
}

#[test]
fn containerd_versions_are_read_from_what_each_build_prints() {
    let v = |s: &str| ContainerdVersion::parse(s).map(|v| (v.major, v.minor));
    assert_eq!(
        v("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"),
        Some((1, 6))
    );
    assert_eq!(v("containerd containerd.io v2.0.4 1a43cb"), Some((2, 0)));
    assert_eq!(
        v("containerd github.com/k3s-io/containerd v1.7.23-k3s2 2f8c6f2e"),
        Some((1, 7))
    );
    assert_eq!(v("garbage"), None);
    assert_eq!(v(""), None);
}

#[test]
fn an_unknown_version_anywhere_is_an_error_not_a_panic() {
    // k0s: the version comes from the CRI config k0s generates.
    let dropin = "/etc/k0s/containerd.d/kwasm.toml";
    let f = facts(&[("/run/k0s/containerd-cri.toml", "version = 5\n")]);
    let e = super::compute(
        &flavor(Kind::K0s, dropin),
        &f,
        None,
        &[entry("spin", "/opt/kwasm/bin")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("version 5"), "{e}");
    // A k3s rendering and a microk8s template with a version nobody knows.
    let rendered = format!("{K3S_DIR}/config.toml");
    for (kind, path) in [
        (Kind::K3s, rendered.as_str()),
        (
            Kind::Microk8s,
            "/var/snap/microk8s/current/args/containerd-template.toml",
        ),
        (Kind::Containerd, MAIN),
    ] {
        for text in [
            "version = 5\n",
            "version = -1\n",
            "version = 9223372036854775807\n",
        ] {
            let e = super::compute(
                &flavor(kind, path),
                &facts(&[(path, text)]),
                None,
                &[entry("spin", "/var/snap/microk8s/common/kwasm/bin")],
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("not supported"),
                "{kind:?} {text}: {e}"
            );
        }
    }
}
