//! SHA-256 computed on the bytes as they pass, so nothing is read twice to be verified.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub fn hex(d: Sha256) -> String {
    hex::encode(d.finalize())
}

pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (String, u64) {
        (hex(self.hasher), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (String, u64) {
        (hex(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Digest of a whole file (used for installed binaries, whose digest the state records).
pub fn file_sha256(path: &std::path::Path) -> io::Result<String> {
    let mut r = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish().0)
}
