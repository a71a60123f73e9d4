//! Giving back the memory an idle agent does not use: the pages of its own binary mapped while it last
//! worked. Only mappings of the executable that are read-only and hold no page of their own (every
//! page still the file's, none copied on write — e.g. relocated data is) are unmapped: their pages stay
//! in the page cache, and touching them again maps them back as a minor fault.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::sys::mman::{madvise, MmapAdvise};

/// Unmaps this executable's clean read-only pages; they are mapped again as the code runs.
pub fn unmap_idle_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, len) in clean_ranges(&smaps, &exe) {
        let (Some(addr), Some(len)) = (NonNull::new(start as *mut c_void), NonZeroUsize::new(len))
        else {
            continue;
        };
        // SAFETY: the range is a private, read-only mapping of the executable's own file with no
        // anonymous (copied-on-write) page: every page equals the file's, so dropping them loses
        // nothing — they are read back from the file, which is still in the page cache.
        let _ = unsafe { madvise(addr.cast(), len.get(), MmapAdvise::MADV_DONTNEED) };
    }
}

/// Read-only mappings of `exe` without anonymous pages, from a /proc/PID/smaps text:
/// (start address, length).
fn clean_ranges(smaps: &str, exe: &Path) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_of(line, exe) {
            current = range;
            continue;
        }
        if let (Some(r), Some(anon)) = (current, line.strip_prefix("Anonymous:")) {
            if anon.trim().trim_end_matches("kB").trim() == "0" {
                out.push(r);
            }
            current = None;
        }
    }
    out
}

/// For a mapping's header line: Some(Some(range)) when it is a read-only mapping of `exe`,
/// Some(None) for any other mapping; None for a line that is not a header.
fn mapping_of(line: &str, exe: &Path) -> Option<Option<(usize, usize)>> {
    let mut f = line.split_whitespace();
    let range = f.next()?;
    let (a, b) = range.split_once('-')?;
    let (a, b) = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    let perms = f.next()?;
    if perms.len() != 4 {
        return None;
    }
    let path: Option<PathBuf> = f.nth(3).map(PathBuf::from);
    let ours =
        path.as_deref() == Some(exe) && perms.starts_with('r') && perms.as_bytes()[1] == b'-';
    Some((ours && b > a).then_some((a, b - a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_chosen() {
        let block = |header: &str, anon: u32| {
            format!("{header}\nSize: 4 kB\nRss: 4 kB\nAnonymous: {anon} kB\nVmFlags: rd\n")
        };
        let smaps = [
            block("55d0c0000000-55d0c0100000 r--p 00000000 08:01 42 /usr/bin/kwasm-agent", 0),
            block("55d0c0100000-55d0c0800000 r-xp 00100000 08:01 42 /usr/bin/kwasm-agent", 0),
            // Relocated data, made read-only afterwards: its pages are copies.
            block("55d0c0800000-55d0c0900000 r--p 00800000 08:01 42 /usr/bin/kwasm-agent", 376),
            block("55d0c0900000-55d0c0910000 rw-p 00900000 08:01 42 /usr/bin/kwasm-agent", 0),
            block("7f0000000000-7f0000100000 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6", 0),
            block("7f0000200000-7f0000300000 rw-p 00000000 00:00 0", 64),
        ]
        .concat();
        assert_eq!(
            clean_ranges(&smaps, Path::new("/usr/bin/kwasm-agent")),
            vec![(0x55d0c0000000, 0x100000), (0x55d0c0100000, 0x700000)]
        );
    }

    #[test]
    fn code_still_runs_after_its_pages_are_unmapped() {
        unmap_idle_code();
        // Calling into the code again (formatting, hashing) faults its pages back in.
        assert_eq!(format!("{:x}", 255), "ff");
        unmap_idle_code();
        use sha2::Digest;
        let maps = std::fs::read("/proc/self/maps").unwrap_or_default();
        assert_eq!(hex::encode(sha2::Sha256::digest(&maps)).len(), 64);
    }
}
