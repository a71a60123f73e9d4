//! The documentation stays true to the binary: every settings block in README.md and docs/*.md is a
//! file `kwasm-agent check` accepts (containerd configs and sketches with `…` placeholders aside), and
//! every command line that starts with `kwasm-agent` names a subcommand that exists and only flags
//! its `--help` lists.

use std::path::{Path, PathBuf};
use std::process::Command;

use kwasm_tests::agent::agent_bin;

fn pages() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Every fenced block of a page: (info string's first word, body, line it starts on).
fn blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                let info = info.split_whitespace().next().unwrap_or("").to_owned();
                open = Some((info, String::new(), i + 1));
            }
            (Some(_), Some(_)) => out.push(open.take().unwrap()),
            (Some((_, body, _)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn is_containerd_config(body: &str) -> bool {
    body.contains("[plugins")
        || body
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .is_some_and(|l| l.starts_with("version =") || l.starts_with("imports ="))
}

/// A block with `…` standing for a value (outside comments) shows a shape, not a file.
fn is_sketch(body: &str) -> bool {
    body.lines()
        .map(|l| l.split(" #").next().unwrap_or(""))
        .any(|l| !l.trim_start().starts_with('#') && l.contains('…'))
}

#[test]
fn every_settings_block_in_the_docs_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (info, body, line) in blocks(&text) {
            if info != "toml" || is_containerd_config(&body) || is_sketch(&body) {
                continue;
            }
            let file = dir.path().join(format!("block-{checked}.toml"));
            std::fs::write(&file, &body).unwrap();
            let out = Command::new(agent_bin())
                .args(["check", "--config", file.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}:{line}: kwasm-agent check refuses the block: {}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "no settings block found");
}

#[test]
fn every_command_line_in_the_docs_names_real_subcommands_and_flags() {
    let mut seen = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (_, body, line) in blocks(&text) {
            for cmd in body.lines().map(str::trim) {
                let Some(rest) = cmd.strip_prefix("kwasm-agent ") else {
                    continue;
                };
                let sub = rest.split_whitespace().next().unwrap();
                let code = cmd.split('#').next().unwrap();
                let help = Command::new(agent_bin())
                    .args([sub, "--help"])
                    .output()
                    .unwrap();
                let listed = String::from_utf8_lossy(&help.stdout);
                assert!(
                    help.status.success(),
                    "{}:{line}: `kwasm-agent {sub}` is no subcommand: {cmd}",
                    page.display()
                );
                for flag in code
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .filter(|w| w.starts_with("--") && w.len() > 2)
                {
                    assert!(
                        listed.contains(flag),
                        "{}:{line}: `kwasm-agent {sub}` has no {flag}: {cmd}",
                        page.display()
                    );
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "only {seen} command lines found");
}
