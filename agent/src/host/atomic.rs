//! Durable file replacement: a reader sees the old file or the new one, never a mix, and after a crash
//! (even a power loss) the rename is not lost.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A temp file beside its destination; dropped without `commit` it is removed.
pub struct PendingFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// The temp name starts with '.' and ends in `.kwasm-tmp` so nothing scanning the directory for
    /// shims (k3s looks in /opt/kwasm/bin) mistakes it for one, and a crash leaves an obvious leftover.
    pub fn create(dest: &Path, mode: u32) -> anyhow::Result<Self> {
        let dir = dest
            .parent()
            .context("destination has no parent directory")?;
        Self::create_in(dir, dest, mode)
    }

    /// Stage the temp file in `tmp_dir` (same filesystem as `dest`), so that even a crash that leaves the
    /// temp file behind never leaves a half-written file in `dest`'s directory.
    pub fn create_in(tmp_dir: &Path, dest: &Path, mode: u32) -> anyhow::Result<Self> {
        let name = dest
            .file_name()
            .context("destination has no file name")?
            .to_string_lossy();
        let unique = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = tmp_dir.join(format!(".{name}.{}-{unique}.kwasm-tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self {
            file: Some(file),
            tmp,
            dest: dest.to_owned(),
            committed: false,
        })
    }

    /// The temp file, to write to until it is sealed.
    pub fn file(&mut self) -> std::io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the file is sealed"))
    }

    /// A buffered writer for large content, with the disk write started behind it (see
    /// [`WriteBehind`]); flush it before sealing.
    pub fn write_behind(&mut self) -> std::io::Result<std::io::BufWriter<WriteBehind<'_>>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            WriteBehind::new(self.file()?),
        ))
    }

    /// Where the content waits until `commit`.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// fsync and close the temp file: its content is final and it can be executed (an executable
    /// still open for writing fails with ETXTBSY).
    pub fn seal(&mut self) -> anyhow::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()
                .with_context(|| format!("fsync {}", self.tmp.display()))?;
        }
        Ok(())
    }

    /// Seal, rename over the destination, fsync the directory.
    pub fn commit(self) -> anyhow::Result<()> {
        let dest = self.dest.clone();
        self.commit_to(&dest)
    }

    /// `commit`, to another destination on the same filesystem (decided once the content is known).
    pub fn commit_to(mut self, dest: &Path) -> anyhow::Result<()> {
        self.seal()?;
        std::fs::rename(&self.tmp, dest)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), dest.display()))?;
        self.committed = true;
        sync_dir(
            dest.parent()
                .context("destination has no parent directory")?,
        )
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes to a file and asks the kernel to start putting each few MiB on disk as soon as it is
/// written. The fsync that seals a large binary then waits only for the last stretch instead of all of
/// it: the disk works while the download and the unpacking go on.
pub struct WriteBehind<'a> {
    file: &'a File,
    written: u64,
    started: u64,
}

impl<'a> WriteBehind<'a> {
    const STRETCH: u64 = 8 << 20;

    pub fn new(file: &'a File) -> Self {
        Self {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl Write for WriteBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= Self::STRETCH {
            start_writeback(self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&mut &*self.file).flush()
    }
}

/// Only a hint: the fsync at the end is what makes the data durable, so a failure here is ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed; the call reads no memory.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as _,
            len as _,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

pub fn write(dest: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut p = PendingFile::create(dest, mode)?;
    p.file()?
        .write_all(bytes)
        .with_context(|| format!("writing {}", dest.display()))?;
    // create() honours the umask; the mode asked for is the mode wanted.
    p.file()?
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    p.commit()
}

/// Keep the mode of the file being replaced (a config the operator made 0600 stays 0600).
pub fn replace_keeping_mode(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mode = std::fs::metadata(dest)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write(dest, bytes, mode)
}

pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Make `link` a symlink to `target`, atomically (a temp link renamed over it): whoever opens `link`
/// gets the old target or the new one, never nothing.
pub fn point_symlink(link: &Path, target: &Path) -> anyhow::Result<()> {
    let dir = link.parent().context("link has no parent directory")?;
    let name = link
        .file_name()
        .context("link has no file name")?
        .to_string_lossy();
    let unique = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{unique}.kwasm-tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating a link in {}", dir.display()))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing {}", link.display()));
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"one", 0o600).unwrap();
        write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_pending_file_leaves_destination_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"old", 0o644).unwrap();
        {
            let mut pf = PendingFile::create(&p, 0o644).unwrap();
            pf.file().unwrap().write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
