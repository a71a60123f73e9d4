//! Shim artifacts built by the tests: well-formed release tarballs and hostile ones.

use std::io::Write;

use flate2::{write::GzEncoder, Compression};
use sha2::{Digest, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
}

/// A tar (not compressed) with the entries written exactly as given — the tar crate's builder refuses
/// hostile names, so the header name is set by hand.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data): (&str, &[u8]) = match e {
            Entry::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                (n, d)
            }
            Entry::Symlink(n, to) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(to).unwrap();
                (n, b"")
            }
            Entry::Hardlink(n, to) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name(to).unwrap();
                (n, b"")
            }
            Entry::CharDevice(n) => {
                h.set_entry_type(tar::EntryType::Char);
                (n, b"")
            }
        };
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A release-style `.tar.gz` holding `binary` at the archive root.
pub fn release(binary: &str, contents: &[u8]) -> Vec<u8> {
    gzip(&tar(&[
        Entry::File("LICENSE", b"Apache-2.0\n"),
        Entry::File(binary, contents),
    ]))
}

/// Contents unique to a test that run as a shim does when asked its version (`-v`): a shell script
/// that exits before the filler bytes, which make it as large as asked.
pub fn fake_binary(tag: &str, len: usize) -> Vec<u8> {
    let mut v = format!("#!/bin/sh\necho \"fake shim {tag}\"\nexit 0\n").into_bytes();
    let mut x: u32 = 0x9e3779b9 ^ tag.len() as u32;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push((x & 0xff) as u8);
    }
    v.truncate(len);
    v
}
