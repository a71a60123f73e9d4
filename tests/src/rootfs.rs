//! Minimal root filesystems built from this machine's programs: a program and the shared libraries
//! `ldd` says it needs, copied to the same paths under a root.

use std::path::Path;
use std::process::Command;

/// Copies `program` to `as_path` under `root`, with its loader and libraries.
pub fn install_program(root: &Path, program: &Path, as_path: &Path) {
    copy_into(root, program, as_path);
    let ldd = Command::new("ldd").arg(program).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        copy_into(root, Path::new(lib), Path::new(lib));
    }
}

fn copy_into(root: &Path, src: &Path, dest: &Path) {
    let target = root.join(dest.strip_prefix("/").unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(src, &target).unwrap();
}
