//! How command results read to a person (stdout; logs go to stderr).

use crate::containerd::candidate::Dumps;
use crate::containerd::effective;
use crate::containerd::restart::Action;
use crate::containerd::Outcome;
use crate::engine::status::StatusReport;
use crate::engine::{ApplyReport, Engine, HostPlan, RemoveReport};

pub fn apply(r: &ApplyReport) {
    for o in &r.shims {
        println!("{}: {}", o.name, o.result);
    }
    if let Some(c) = &r.config {
        config(c);
    }
    notes(&r.notes);
}

pub fn remove(r: &RemoveReport) {
    for name in &r.removed {
        println!("{name}: removed");
    }
    if let Some(c) = &r.config {
        config(c);
    }
    if r.removed.is_empty() && r.in_use.is_empty() {
        println!("nothing to remove");
    }
    for b in in_use(r) {
        println!("{b}; left installed");
    }
}

/// One line per shim still in use: which containers run on it.
pub fn in_use(r: &RemoveReport) -> Vec<String> {
    r.in_use
        .iter()
        .map(|(name, users)| {
            let what = if users.iter().all(|u| u.namespace.is_none()) {
                "shim process(es)"
            } else {
                "running container(s)"
            };
            let ids: Vec<String> = users.iter().map(|u| u.to_string()).collect();
            format!(
                "{name} is in use by {} {what}: {}",
                users.len(),
                ids.join(", ")
            )
        })
        .collect()
}

fn config(c: &Outcome) {
    if c.changed_files.is_empty() {
        println!("containerd config: unchanged");
    } else {
        for f in &c.changed_files {
            println!("containerd config: wrote {}", f.display());
        }
    }
    println!("containerd: {}", c.restart);
    if let Some(l) = &c.loaded {
        println!(
            "containerd: CRI plugin lists handlers: {}",
            if l.is_empty() {
                "(none of ours)".to_owned()
            } else {
                l.join(", ")
            }
        );
    }
}

fn notes(notes: &[String]) {
    for n in notes {
        println!("note: {n}");
    }
}

pub fn plan(engine: &Engine, plan: &HostPlan) {
    println!("node architecture: {}", engine.arch);
    for s in &plan.shims {
        println!("shim {}: {}", s.shim.name, s.step);
    }
    match &plan.config {
        Ok(c) if !c.changes() => println!("containerd config: no change"),
        Ok(c) => {
            for w in &c.writes {
                let before = w.before.as_deref().unwrap_or("");
                let after = w.after.as_deref().unwrap_or("");
                let verb = match (&w.before, &w.after) {
                    (None, _) => "create",
                    (_, None) => "delete",
                    _ => "edit",
                };
                println!("containerd config: {verb} {}", w.path.display());
                let name = w.path.display().to_string();
                print!(
                    "{}",
                    similar::TextDiff::from_lines(before, after)
                        .unified_diff()
                        .context_radius(3)
                        .header(&name, &name)
                );
            }
        }
        Err(e) => println!("containerd config: cannot plan: {e:#}"),
    }
    if let Ok(c) = &plan.config {
        notes(&c.notes);
    }
    let flavor = &engine.containerd.flavor;
    let restart = match (&plan.config, &plan.restart) {
        (Err(_), _) => "unknown".to_owned(),
        (Ok(c), Action::Skip(why)) if c.changes() => format!("no ({why})"),
        (Ok(_), Action::Skip(_)) => {
            "no (config unchanged; only if a handler is found not loaded)".to_owned()
        }
        (Ok(_), _) => format!("yes ({} unit {})", flavor.kind.name(), flavor.unit),
    };
    println!("restart containerd: {restart}");
}

/// containerd's effective config with the edit against without it (`config dump` of both), and
/// whether that proves the edit; an error when it does not (apply would refuse it).
pub fn effective(
    dumps: &Dumps,
    check: impl FnOnce(&toml::Table, &toml::Table) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (before, after) = match dumps {
        Dumps::Unavailable(why) => {
            println!("containerd effective config: not checked: {why}");
            return Ok(());
        }
        Dumps::Both { before, after } => (before, after),
    };
    println!("containerd effective config (config dump), what changes:");
    for c in effective::changes(before, after) {
        println!("  {c}");
    }
    match check(before, after) {
        Ok(()) => {
            println!("containerd effective config: proven (only the agent's runtimes change)");
            Ok(())
        }
        Err(e) => Err(e.context(
            "containerd's effective config does not prove the edit; apply would refuse it",
        )),
    }
}

pub fn status(r: &StatusReport) {
    println!(
        "host root {}  install dir {}  arch {}",
        r.host_root, r.install_dir, r.arch
    );
    let c = &r.containerd;
    println!(
        "containerd: {} config {} socket {} unit {}",
        c.flavor, c.config, c.socket, c.unit
    );
    match &c.error {
        None => println!(
            "containerd: reachable, runtime ready: {}, handlers loaded: {}",
            c.runtime_ready.unwrap_or(false),
            c.handlers_loaded.join(", ")
        ),
        Some(e) => println!("containerd: not reachable: {e}"),
    }
    for f in &c.files_owned {
        println!("config file changed by kwasm-agent: {f}");
    }
    if r.shims.is_empty() {
        println!("no shims installed");
    }
    for sh in &r.shims {
        let loaded = match sh.loaded {
            Some(true) => "loaded",
            Some(false) => "NOT loaded",
            None => "loaded: unknown",
        };
        println!(
            "shim {} {} ({}): {} sha256 {}  {}  {}{}",
            sh.name,
            sh.version,
            sh.arch,
            sh.binary_path,
            sh.binary_sha256,
            if sh.configured {
                "configured"
            } else {
                "NOT configured"
            },
            loaded,
            if sh.binary_intact {
                ""
            } else {
                "  [binary missing or changed]"
            }
        );
        if let Some(l) = &sh.link {
            println!("  linked as {l}");
        }
        if let Some(s) = &sh.signed_by {
            println!("  signed by {s}");
        }
    }
}

pub fn check(s: &crate::settings::Settings) {
    println!("settings are valid: {} shim(s)", s.shims.len());
    for shim in &s.shims {
        let arches: Vec<&str> = shim.platforms.iter().map(|p| p.arch.as_str()).collect();
        println!(
            "  {} {} ({}) for {}",
            shim.name,
            shim.version,
            shim.runtime_type,
            if arches.is_empty() {
                "no architecture".to_owned()
            } else {
                arches.join(", ")
            }
        );
        if let Some(v) = &shim.verify {
            println!("    {}", v.requirement());
        }
    }
}
