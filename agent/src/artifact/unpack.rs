//! Takes the one declared binary out of an artifact: a `.tar.gz`, a `.tar`, a gzip of the binary, or the
//! bare binary itself (recognised by content, not by file name). Anything suspicious in an archive —
//! absolute paths, `..`, the binary as a link or device, more bytes than allowed — refuses the whole
//! artifact. The input is always read to its end so the caller's digest covers every byte.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Component, Path};

use flate2::read::MultiGzDecoder;

use super::digest::HashingWriter;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {0:?} has an absolute path; refusing the archive")]
    AbsolutePath(String),
    #[error("archive entry {0:?} escapes the archive with '..'; refusing the archive")]
    Traversal(String),
    #[error("archive entry {entry:?} for binary {binary:?} is a {kind}, not a regular file; refusing the archive")]
    NotRegular {
        entry: String,
        binary: String,
        kind: &'static str,
    },
    #[error(
        "archive holds {binary:?} twice ({first:?} and {second:?}); refusing the ambiguous archive"
    )]
    Duplicate {
        binary: String,
        first: String,
        second: String,
    },
    #[error("binary {0:?} not found in the archive")]
    Missing(String),
    #[error(
        "the archive holds two shim binaries ({first:?} and {second:?}); name the one to take"
    )]
    Ambiguous { first: String, second: String },
    #[error("the archive holds no containerd-shim-* binary")]
    NoShim,
    #[error("artifact unpacks to more than {0} bytes (artifacts.max_size); refusing it as a possible decompression bomb")]
    TooLarge(u64),
    #[error("reading the archive: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The binary's file name in the archive ("" for a bare binary).
    pub binary_name: String,
    pub binary_sha256: String,
    pub size: u64,
    /// Small files beside the binary that were asked for (a signature, a certificate), by file name.
    pub members: BTreeMap<String, Vec<u8>>,
}

/// A member beside the binary (a signature, a certificate) is a few KiB; more is not one.
const MEMBER_MAX: u64 = 1 << 20;

/// `binary` for "the one `containerd-shim-*` file in the archive", when its name is not known yet.
pub const ANY_SHIM: &str = "";

/// Reads `input` to its end, writes the binary named `binary` to `out`, and keeps the archive members
/// named in `members` (only a tar has any).
pub fn unpack(
    input: impl Read,
    binary: &str,
    members: &[String],
    out: &mut impl Write,
    max: u64,
) -> Result<Unpacked, UnpackError> {
    let (head, input) = peek(input, 512)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        // The decompressed side is capped too: a small gzip can expand without bound.
        let gz = Capped::new(MultiGzDecoder::new(input), max);
        let (head, inner) = peek(gz, 512)?;
        if is_tar(&head) {
            return extract_from_tar(inner, binary, members, out, max);
        }
        return copy_bare(inner, out, max);
    }
    if is_tar(&head) {
        return extract_from_tar(input, binary, members, out, max);
    }
    copy_bare(input, out, max)
}

fn is_tar(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// The first bytes, and a reader that still yields them.
type Peeked<R> = (Vec<u8>, io::Chain<io::Cursor<Vec<u8>>, R>);

fn peek<R: Read>(mut r: R, n: usize) -> Result<Peeked<R>, UnpackError> {
    let mut head = Vec::with_capacity(n);
    (&mut r)
        .take(n as u64)
        .read_to_end(&mut head)
        .map_err(map_cap)?;
    Ok((head.clone(), io::Cursor::new(head).chain(r)))
}

fn copy_bare(
    mut input: impl Read,
    out: &mut impl Write,
    max: u64,
) -> Result<Unpacked, UnpackError> {
    let mut w = HashingWriter::new(out);
    let mut capped = Capped::new(&mut input, max);
    io::copy(&mut capped, &mut w).map_err(map_cap)?;
    let (binary_sha256, size) = w.finish();
    Ok(Unpacked {
        binary_name: String::new(),
        binary_sha256,
        size,
        members: BTreeMap::new(),
    })
}

/// A shim binary as releases name it; not its signature or certificate beside it.
fn is_shim_name(name: &str) -> bool {
    name.starts_with("containerd-shim-")
        && ![".sig", ".pem", ".bundle", ".sha256", ".txt"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// A signature or certificate member, read whole (it is small): a regular file, named once.
fn keep_member<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: &str,
    name: &str,
    kept: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, UnpackError> {
    let kind = entry.header().entry_type();
    if !(kind.is_file() || kind == tar::EntryType::Continuous) {
        return Err(UnpackError::NotRegular {
            entry: raw.to_owned(),
            binary: name.to_owned(),
            kind: kind_name(kind),
        });
    }
    if kept.contains_key(name) {
        return Err(UnpackError::Duplicate {
            binary: name.to_owned(),
            first: name.to_owned(),
            second: raw.to_owned(),
        });
    }
    let mut content = Vec::new();
    Capped::new(entry, MEMBER_MAX)
        .read_to_end(&mut content)
        .map_err(map_cap)?;
    Ok(content)
}

/// A second entry that could be the binary: ambiguous when any shim was asked for, else a duplicate.
fn twice(binary: &str, first: String, second: String) -> UnpackError {
    if binary == ANY_SHIM {
        UnpackError::Ambiguous { first, second }
    } else {
        UnpackError::Duplicate {
            binary: binary.into(),
            first,
            second,
        }
    }
}

/// The binary's bytes to `out`, hashed on the way, at most `max` of them.
fn write_binary<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: String,
    out: &mut impl Write,
    max: u64,
) -> Result<Unpacked, UnpackError> {
    if entry.header().size().map_err(map_cap)? > max {
        return Err(UnpackError::TooLarge(max));
    }
    let mut w = HashingWriter::new(&mut *out);
    io::copy(&mut Capped::new(entry, max), &mut w).map_err(map_cap)?;
    let (binary_sha256, size) = w.finish();
    Ok(Unpacked {
        binary_name: name,
        binary_sha256,
        size,
        members: BTreeMap::new(),
    })
}

fn extract_from_tar(
    input: impl Read,
    binary: &str,
    members: &[String],
    out: &mut impl Write,
    max: u64,
) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(input);
    let mut found: Option<(String, Unpacked)> = None;
    let mut kept: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in archive.entries().map_err(map_cap)? {
        let mut entry = entry.map_err(map_cap)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        check_entry_path(&raw)?;
        let path = Path::new(&raw);
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if members.contains(&name) {
            let content = keep_member(&mut entry, &raw, &name, &kept)?;
            kept.insert(name, content);
            continue;
        }
        let wanted = if binary == ANY_SHIM {
            is_shim_name(&name)
        } else {
            name == binary
        };
        if !wanted {
            continue;
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            if binary == ANY_SHIM {
                continue;
            }
            return Err(UnpackError::NotRegular {
                entry: raw,
                binary: binary.into(),
                kind: kind_name(kind),
            });
        }
        if let Some((first, _)) = &found {
            return Err(twice(binary, first.clone(), raw));
        }
        let unpacked = write_binary(&mut entry, name, out, max)?;
        found = Some((raw, unpacked));
    }
    // Whatever follows the end-of-archive marker is still part of the artifact's digest.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(map_cap)?;
    found
        .map(|(_, u)| Unpacked { members: kept, ..u })
        .ok_or_else(|| {
            if binary == ANY_SHIM {
                UnpackError::NoShim
            } else {
                UnpackError::Missing(binary.into())
            }
        })
}

fn check_entry_path(raw: &str) -> Result<(), UnpackError> {
    if raw.starts_with('/') {
        return Err(UnpackError::AbsolutePath(raw.into()));
    }
    if Path::new(raw)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(UnpackError::Traversal(raw.into()));
    }
    Ok(())
}

fn kind_name(k: tar::EntryType) -> &'static str {
    match k {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Directory => "directory",
        _ => "special entry",
    }
}

/// Reading past `max` bytes is an error, carried through io::Error so tar and gzip pass it up.
struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
}

#[derive(Debug)]
struct CapExceeded(u64);
impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} bytes", self.0)
    }
}
impl std::error::Error for CapExceeded {}

impl<R> Capped<R> {
    fn new(inner: R, max: u64) -> Self {
        Self {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte tells "exactly max" from "more than max".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CapExceeded(self.max))),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn map_cap(e: io::Error) -> UnpackError {
    match e.get_ref().and_then(|i| i.downcast_ref::<CapExceeded>()) {
        Some(c) => UnpackError::TooLarge(c.0),
        None => UnpackError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/bin/sh").unwrap();
            }
            // Write the name bytes raw: the builder's own API refuses the hostile paths we test.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn run(input: &[u8], max: u64) -> Result<(Unpacked, Vec<u8>), UnpackError> {
        let mut out = Vec::new();
        let u = unpack(input, "shim", &[], &mut out, max)?;
        Ok((u, out))
    }

    #[test]
    fn takes_the_binary_from_tar_gz_tar_gz_only_and_bare() {
        let t = tar_with(&[
            ("README", tar::EntryType::Regular, b"hi"),
            ("shim", tar::EntryType::Regular, b"ELF.."),
        ]);
        for input in [gz(&t), t.clone(), gz(b"ELF.."), b"ELF..".to_vec()] {
            let (u, out) = run(&input, 1 << 20).unwrap();
            assert_eq!(out, b"ELF..");
            assert_eq!(u.size, 5);
            assert_eq!(u.binary_sha256, hex::encode(sha2::Sha256::digest(b"ELF..")));
        }
    }

    use sha2::Digest;

    #[rstest::rstest]
    #[case::path_traversal(&[("../../etc/shim", tar::EntryType::Regular, "x")], "escapes")]
    #[case::absolute_path(&[("/usr/bin/shim", tar::EntryType::Regular, "x")], "absolute")]
    #[case::symlink_as_the_binary(&[("shim", tar::EntryType::Symlink, "")], "symbolic link")]
    #[case::device_node(&[("shim", tar::EntryType::Char, "")], "character device")]
    #[case::binary_twice(
        &[("a/shim", tar::EntryType::Regular, "x"), ("b/shim", tar::EntryType::Regular, "y")],
        "twice"
    )]
    #[case::binary_missing(&[("other", tar::EntryType::Regular, "x")], "not found")]
    fn refuses_hostile_archives(
        #[case] entries: &[(&str, tar::EntryType, &str)],
        #[case] want: &str,
    ) {
        let entries: Vec<_> = entries
            .iter()
            .map(|(path, kind, data)| (*path, *kind, data.as_bytes()))
            .collect();
        let e = run(&gz(&tar_with(&entries)), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "wanted {want:?} in {e:?}");
    }

    #[test]
    fn refuses_a_decompression_bomb() {
        let big = vec![0u8; 4 << 20];
        let t = tar_with(&[("shim", tar::EntryType::Regular, &big)]);
        let bomb = gz(&t);
        assert!(bomb.len() < 64 << 10);
        let e = run(&bomb, 1 << 20).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge(_)), "{e}");
        let e = run(&gz(&big), 1 << 20).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge(_)), "{e}");
    }

    #[test]
    fn keeps_the_named_members_beside_the_binary() {
        let t = tar_with(&[
            ("d/shim", tar::EntryType::Regular, b"ELF.."),
            ("d/shim.sig", tar::EntryType::Regular, b"c2ln"),
            ("d/shim.pem", tar::EntryType::Regular, b"-----BEGIN"),
            ("d/other", tar::EntryType::Regular, b"no"),
        ]);
        let mut out = Vec::new();
        let wanted = ["shim.sig".to_owned(), "shim.pem".to_owned()];
        let u = unpack(&gz(&t)[..], "shim", &wanted, &mut out, 1 << 20).unwrap();
        assert_eq!(out, b"ELF..");
        assert_eq!(u.members.len(), 2);
        assert_eq!(u.members["shim.sig"], b"c2ln");
        // A member that is a link, or is there twice, refuses the archive like the binary would.
        for bad in [
            tar_with(&[
                ("shim", tar::EntryType::Regular, b"x"),
                ("shim.sig", tar::EntryType::Symlink, b""),
            ]),
            tar_with(&[
                ("shim", tar::EntryType::Regular, b"x"),
                ("a/shim.sig", tar::EntryType::Regular, b"1"),
                ("b/shim.sig", tar::EntryType::Regular, b"2"),
            ]),
        ] {
            assert!(unpack(&bad[..], "shim", &wanted, &mut Vec::new(), 1 << 20).is_err());
        }
        // Oversized members are not what a signature is.
        let big = vec![b'A'; (MEMBER_MAX + 1) as usize];
        let t = tar_with(&[
            ("shim", tar::EntryType::Regular, b"x"),
            ("shim.sig", tar::EntryType::Regular, &big),
        ]);
        assert!(unpack(&t[..], "shim", &wanted, &mut Vec::new(), 8 << 20).is_err());
    }

    #[test]
    fn finds_the_one_shim_when_its_name_is_not_given() {
        let t = tar_with(&[
            ("containerd-shim-x-v1", tar::EntryType::Regular, b"ELF.."),
            ("containerd-shim-x-v1.sig", tar::EntryType::Regular, b"s"),
            ("containerd-shim-x-v1.pem", tar::EntryType::Regular, b"p"),
        ]);
        let mut out = Vec::new();
        let u = unpack(&t[..], ANY_SHIM, &[], &mut out, 1 << 20).unwrap();
        assert_eq!(u.binary_name, "containerd-shim-x-v1");
        assert_eq!(out, b"ELF..");
        let two = tar_with(&[
            ("containerd-shim-x-v1", tar::EntryType::Regular, b"1"),
            ("containerd-shim-y-v1", tar::EntryType::Regular, b"2"),
        ]);
        assert!(matches!(
            unpack(&two[..], ANY_SHIM, &[], &mut Vec::new(), 1 << 20),
            Err(UnpackError::Ambiguous { .. })
        ));
        let none = tar_with(&[("README", tar::EntryType::Regular, b"1")]);
        assert!(matches!(
            unpack(&none[..], ANY_SHIM, &[], &mut Vec::new(), 1 << 20),
            Err(UnpackError::NoShim)
        ));
    }
}
