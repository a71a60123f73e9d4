//! k3s/rke2 config templates are Go templates, not TOML: the agent's tables go in one marked block after
//! the base template, and removal cuts exactly that block out again.

pub const BASE: &str = "{{ template \"base\" . }}\n";
const BEGIN: &str = "\n# BEGIN kwasm-agent (managed; `kwasm-agent remove` deletes this block)\n";
const END: &str = "# END kwasm-agent\n";

/// The text without the agent's block.
pub fn strip_block(text: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}", &text[..b], &text[e + END.len()..]),
        _ => text.to_owned(),
    }
}

/// The template with `block` as the agent's block (or without one). None: the file should not exist
/// (the agent created it and nothing else is in it).
pub fn set_block(current: Option<&str>, block: Option<&str>, created: bool) -> Option<String> {
    let base = strip_block(current.unwrap_or(BASE));
    match block {
        Some(b) => {
            let sep = if base.ends_with('\n') || base.is_empty() {
                ""
            } else {
                "\n"
            };
            Some(format!("{base}{sep}{BEGIN}{b}{END}"))
        }
        None if created && base == BASE => None,
        None if current.is_none() => None,
        None => Some(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_roundtrips_and_created_file_disappears() {
        let user = "{{ template \"base\" . }}\n\n[plugins.\"x\"]\n  a = 1\n";
        let with = set_block(Some(user), Some("[t]\nk = 1\n"), false).unwrap();
        assert!(with.starts_with(user) && with.contains("k = 1"));
        let replaced = set_block(Some(&with), Some("[t]\nk = 2\n"), false).unwrap();
        assert!(replaced.contains("k = 2") && !replaced.contains("k = 1"));
        assert_eq!(set_block(Some(&replaced), None, false).unwrap(), user);
        let created = set_block(None, Some("[t]\n"), true).unwrap();
        assert!(created.starts_with(BASE));
        assert_eq!(set_block(Some(&created), None, true), None);
    }
}
