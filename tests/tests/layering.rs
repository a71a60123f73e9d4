//! The layering `agent/src/lib.rs` states, checked on the sources: every `crate::<module>` a top-level
//! module names belongs to a layer below its own (or to itself). A module added to lib.rs must be
//! given a layer here too.

use std::collections::BTreeMap;
use std::path::Path;

/// Layer of each top-level module: a module may use only modules of a higher number.
const LAYERS: &[(&str, u8)] = &[
    ("cli", 1),
    ("controller", 2),
    ("catalog", 2),
    ("node_contract", 3),
    ("crd", 3),
    ("lease", 3),
    ("kube_client", 3),
    ("health", 3),
    ("engine", 4),
    ("artifact", 5),
    ("containerd", 5),
    ("host", 6),
    ("settings", 6),
    ("arch", 7),
    ("backoff", 7),
    ("clock", 7),
    ("telemetry", 7),
    ("timeline", 7),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_one_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let module = rel.split(['/', '.']).next().unwrap();
        if matches!(module, "lib" | "main") {
            continue;
        }
        let Some(&own) = layer.get(module) else {
            panic!("{rel}: module {module} has no layer in tests/tests/layering.rs (and lib.rs)");
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            for used in line.split("crate::").skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let Some(&theirs) = layer.get(name.as_str()) else {
                    continue;
                };
                if name != module && theirs <= own {
                    wrong.push(format!(
                        "{rel}:{}: {module} (layer {own}) uses {name} (layer {theirs})",
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}
