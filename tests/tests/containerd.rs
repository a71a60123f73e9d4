//! apply / remove against a real containerd with running containers: the shim is containerd's own
//! runc shim under a new name, served as a release tarball over loopback HTTP.

use kwasm_tests::containerd::OPERATOR_HEADER;
use kwasm_tests::node_host::NodeHost;

type Node = NodeHost;

/// Every line of `original` appears in `edited` in the same order, and the added lines form one block.
fn assert_only_one_block_added(original: &str, edited: &str) {
    let orig: Vec<&str> = original.lines().collect();
    let mut i = 0;
    let mut added_runs = 0;
    let mut in_added = false;
    for line in edited.lines() {
        if i < orig.len() && line == orig[i] {
            i += 1;
            in_added = false;
        } else {
            if !in_added {
                added_runs += 1;
            }
            in_added = true;
        }
    }
    assert_eq!(i, orig.len(), "original lines lost or reordered:\n{edited}");
    assert_eq!(
        added_runs, 1,
        "expected one contiguous added block:\n{edited}"
    );
}

#[test]
fn apply_wires_the_shim_in_without_disturbing_containers_and_remove_restores_every_byte() {
    let n = Node::new();
    let before_pid = n.cd.run_container("before", None);
    let containerd_pid = n.cd.pid();

    let plan = n.agent("plan", &[]);
    plan.ok();
    assert!(
        plan.stdout.contains("shim kwtest: download"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.lines().any(|l| l.starts_with('+')
            && l.trim_start_matches(['+', ' '])
                == "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kwtest]"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("restart containerd: yes"),
        "{}",
        plan.stdout
    );
    assert_eq!(n.config(), n.original, "plan changed the config");
    assert!(!n.binary().exists(), "plan installed something");

    let r = n.agent("apply", &[]);
    r.ok();
    assert!(
        r.stdout.contains("CRI plugin lists handlers: kwtest"),
        "{}",
        r.stdout
    );
    assert_ne!(n.cd.pid(), containerd_pid, "containerd was not restarted");
    assert_eq!(
        n.cd.task_pid("before"),
        Some(before_pid),
        "a running container was disturbed"
    );

    let edited = n.config();
    assert!(edited.starts_with(OPERATOR_HEADER) && edited.ends_with("# Trailing operator note.\n"));
    assert_only_one_block_added(&n.original, &edited);
    assert!(
        edited.contains(&format!("runtime_type = \"{}\"", n.binary().display())),
        "{edited}"
    );

    let st = n.status();
    assert_eq!(st["shims"][0]["configured"], true);
    assert_eq!(st["shims"][0]["loaded"], true);
    assert_eq!(st["containerd"]["reachable"], true);

    // A container runs through the binary the CRI plugin reports for the handler.
    let loaded = n.binary();
    let wasm_pid = n.cd.run_container("through-kwtest", Some(&loaded));
    assert!(wasm_pid > 0);
    n.cd.stop_container("through-kwtest");

    let restarted_pid = n.cd.pid();
    let r = n.agent("remove", &[]);
    r.ok();
    assert_eq!(
        n.config(),
        n.original,
        "config not byte-identical after remove"
    );
    assert!(!n.binary().exists());
    assert_ne!(
        n.cd.pid(),
        restarted_pid,
        "containerd not restarted after remove"
    );
    assert_eq!(
        n.cd.task_pid("before"),
        Some(before_pid),
        "a running container was disturbed by remove"
    );
    let st = n.status();
    assert_eq!(st["shims"].as_array().unwrap().len(), 0);
    assert!(!st["containerd"]["handlers_loaded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "kwtest"));
}

#[test]
fn second_apply_changes_nothing_and_does_not_restart() {
    let n = Node::new();
    n.agent("apply", &[]).ok();
    let pid = n.cd.pid();
    let mtime = std::fs::metadata(&n.cd.config).unwrap().modified().unwrap();
    let r = n.agent("apply", &[]);
    r.ok();
    assert!(
        r.stdout.contains("containerd config: unchanged"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("not restarted"), "{}", r.stdout);
    assert_eq!(n.cd.pid(), pid, "containerd restarted on a no-op apply");
    assert_eq!(
        std::fs::metadata(&n.cd.config).unwrap().modified().unwrap(),
        mtime
    );
    let plan = n.agent("plan", &[]);
    assert!(
        plan.stdout.contains("containerd config: no change"),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_handler_written_but_never_loaded_triggers_the_missing_restart() {
    // As after an agent killed between writing the config and restarting containerd.
    let n = Node::new();
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    let restart_line = settings
        .lines()
        .find(|l| l.starts_with("restart = "))
        .unwrap()
        .to_owned();
    n.sb.write_settings(&settings.replace(&restart_line, "restart = \"none\""));
    let r = n.agent("apply", &[]);
    r.ok();
    assert!(r.stdout.contains("not restarted"), "{}", r.stdout);
    assert_eq!(n.status()["shims"][0]["loaded"], false);
    n.sb.write_settings(&settings);
    let pid = n.cd.pid();
    n.agent("apply", &[]).ok();
    assert_ne!(n.cd.pid(), pid);
    assert_eq!(n.status()["shims"][0]["loaded"], true);
}

#[test]
fn a_shim_in_use_is_not_removed() {
    let n = Node::new();
    n.agent("apply", &[]).ok();
    let pid = n.cd.run_container("busy", Some(&n.binary()));
    let r = n.agent("remove", &[]);
    r.failed();
    assert!(
        r.reason().contains("kwtest is in use by 1 shim process"),
        "{}",
        r.reason()
    );
    assert!(r.reason().contains("busy"), "{}", r.reason());
    assert!(n.binary().exists());
    assert!(n.config().contains("runtimes.kwtest]"));
    assert_eq!(n.cd.task_pid("busy"), Some(pid));
    n.cd.stop_container("busy");
    n.agent("remove", &[]).ok();
    assert_eq!(n.config(), n.original);
    assert!(!n.binary().exists());
}

#[test]
fn operator_edits_made_after_apply_survive_remove() {
    let n = Node::new();
    n.agent("apply", &[]).ok();
    let edited = n.config().replace(
        "max_container_log_line_size = 16384",
        "# raised for the log shipper\n    max_container_log_line_size = 32768",
    );
    assert_ne!(edited, n.config());
    std::fs::write(&n.cd.config, &edited).unwrap();
    n.agent("remove", &[]).ok();
    let after = n.config();
    assert!(!after.contains("kwtest"), "{after}");
    assert_eq!(
        after,
        n.original.replace(
            "max_container_log_line_size = 16384",
            "# raised for the log shipper\n    max_container_log_line_size = 32768"
        )
    );
    n.cd.wait_ready();
}

#[test]
fn a_config_containerd_rejects_is_never_made_live() {
    // The operator left an edit containerd's loader rejects (containerd still runs on the old one in
    // memory). The agent's candidate would carry it too; the host's containerd refuses the current
    // config before the candidate is even dumped, so nothing is written and containerd is not touched.
    let n = Node::new();
    let broken = n.original.replace("oom_score = 0", "oom_score = \"high\"");
    assert_ne!(broken, n.original);
    std::fs::write(&n.cd.config, &broken).unwrap();
    let pid = n.cd.pid();
    let r = n.agent("apply", &[]);
    r.failed();
    assert!(
        r.reason().contains("containerd refuses the current config")
            && r.reason().contains("fix it first"),
        "{}",
        r.reason()
    );
    assert_eq!(n.config(), broken, "the live config was changed");
    assert_eq!(n.cd.pid(), pid, "containerd was restarted");
    assert!(!n.binary().exists(), "binary left behind");
    let leftovers: Vec<_> = std::fs::read_dir(&n.cd.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("kwasm"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn containerd_not_coming_back_is_rolled_back() {
    // The restart hook brings containerd up with a flag it refuses the first time: containerd exits
    // at start. The agent must put the previous config back, restart again, and report why.
    let n = Node::new();
    let flaky = n.cd.dir.join("flaky-restart.sh");
    let script = std::fs::read_to_string(n.cd.restart_script()).unwrap().replace(
        "setsid containerd --config",
        &format!("if [ ! -e {d}/failed-once ]; then touch {d}/failed-once; EXTRA='--log-level bogus'; fi\nsetsid containerd $EXTRA --config", d = n.cd.dir.display()),
    );
    std::fs::write(&flaky, script).unwrap();
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    n.sb.write_settings(
        &settings
            .replace(
                n.cd.restart_script().to_str().unwrap(),
                flaky.to_str().unwrap(),
            )
            .replace("timeout = \"20s\"", "timeout = \"5s\""),
    );
    let before_pid = n.cd.run_container("before", None);
    let r = n.agent("apply", &[]);
    r.failed();
    let reason = r.reason();
    assert!(
        reason.contains("previous config was restored and containerd restarted"),
        "{reason}"
    );
    assert!(reason.contains("not ready within 5s"), "{reason}");
    assert_eq!(n.config(), n.original, "old config not live after rollback");
    n.cd.wait_ready();
    let st = n.status();
    assert_eq!(
        st["containerd"]["reachable"], true,
        "containerd not healthy after rollback: {st}"
    );
    assert!(
        !n.binary().exists(),
        "binary left behind by a rolled-back apply"
    );
    assert!(st["shims"].as_array().unwrap().is_empty());
    assert_eq!(n.cd.task_pid("before"), Some(before_pid));
}

#[test]
fn a_rollback_that_cannot_finish_still_reports_the_original_cause() {
    // containerd does not come back (a refused flag on its first start), and at that moment the state
    // file cannot be written (a directory sits where it was). The user must read why containerd failed
    // *and* what the cleanup could not do — the second never replaces the first.
    let n = Node::new();
    let flaky = n.cd.dir.join("flaky-restart.sh");
    let state = n.sb.path().join("opt/kwasm/state.json");
    let script = std::fs::read_to_string(n.cd.restart_script()).unwrap().replace(
        "setsid containerd --config",
        &format!(
            "if [ ! -e {d}/failed-once ]; then touch {d}/failed-once; EXTRA='--log-level bogus'; rm -f {s}; mkdir -p {s}/blocked; fi\nsetsid containerd $EXTRA --config",
            d = n.cd.dir.display(),
            s = state.display()
        ),
    );
    std::fs::write(&flaky, script).unwrap();
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    n.sb.write_settings(
        &settings
            .replace(
                n.cd.restart_script().to_str().unwrap(),
                flaky.to_str().unwrap(),
            )
            .replace("timeout = \"20s\"", "timeout = \"3s\""),
    );
    let r = n.agent("apply", &[]);
    r.failed();
    let reason = r.reason();
    assert!(
        reason.contains("not ready within 3s"),
        "the cause is lost: {reason}"
    );
    assert!(
        reason.contains("recording the rollback in the state file failed"),
        "{reason}"
    );
    assert!(reason.contains("could not all be taken back"), "{reason}");
    assert_eq!(n.config(), n.original, "old config not live after rollback");
    n.cd.wait_ready();
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_new_version_goes_in_beside_the_running_one_and_the_old_leaves_with_its_last_container() {
    let n = Node::new();
    n.agent("apply", &[]).ok();
    let old_pid = n.cd.run_container("old", Some(&n.binary()));
    let old_version = std::fs::canonicalize(n.binary()).unwrap();
    let containerd = n.cd.pid();

    // v2: the same shim with other bytes (a different digest), served and pinned.
    let mut shim_bytes = std::fs::read("/usr/bin/containerd-shim-runc-v2").unwrap();
    shim_bytes.extend_from_slice(b"\0kwasm test: version 2\0");
    let v2 = kwasm_tests::archive::release(kwasm_tests::node_host::SHIM_BIN, &shim_bytes);
    n.server.route(
        "/kwtest-v2.tar.gz",
        vec![kwasm_tests::artifact_server::Behavior::Serve(v2.clone())],
    );
    let settings = std::fs::read_to_string(&n.sb.settings)
        .unwrap()
        .replace("version = \"v1.0.0\"", "version = \"v2.0.0\"")
        .replace("/kwtest.tar.gz", "/kwtest-v2.tar.gz")
        .replace(
            &kwasm_tests::archive::sha256(&n.archive),
            &kwasm_tests::archive::sha256(&v2),
        );
    n.sb.write_settings(&settings);

    let r = n.agent("apply", &[]);
    r.ok();
    assert!(
        r.stdout.contains("containerd config: unchanged"),
        "{}",
        r.stdout
    );
    assert_eq!(
        n.cd.pid(),
        containerd,
        "an upgrade that changes no config restarted containerd"
    );
    assert_eq!(
        n.cd.task_pid("old"),
        Some(old_pid),
        "the container on the old version was disturbed"
    );
    assert!(
        old_version.exists(),
        "the old version went while a container runs on it"
    );
    let new_version = std::fs::canonicalize(n.binary()).unwrap();
    assert_ne!(new_version, old_version);
    assert_eq!(std::fs::read(&new_version).unwrap(), shim_bytes);
    let st = n.status();
    assert_eq!(st["shims"][0]["version"], "v2.0.0");
    assert_eq!(st["shims"][0]["loaded"], true);

    // New containers get the new binary.
    n.cd.run_container("new", Some(&n.binary()));
    let runs = |v: &std::path::Path| {
        !kwasm_agent::containerd::inuse::processes::shims_running(&[v.to_owned()]).is_empty()
    };
    assert!(runs(&new_version) && runs(&old_version));

    // Its last container gone, the old version is removed at the next reconcile; the new one stays.
    n.cd.stop_container("old");
    n.agent("apply", &[]).ok();
    assert!(!old_version.exists(), "the unused old version stayed");
    assert!(!old_version.parent().unwrap().exists());
    assert!(new_version.exists());
    n.cd.stop_container("new");
    n.agent("remove", &[]).ok();
    assert_eq!(n.config(), n.original);
    assert!(!new_version.exists());
    let versions = n.sb.path().join("opt/kwasm/versions");
    assert_eq!(
        std::fs::read_dir(&versions).map(|d| d.count()).unwrap_or(0),
        0
    );
}
