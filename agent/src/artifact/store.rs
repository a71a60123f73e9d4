//! The content-addressed cache and the install: carrying out one shim's artifact step, and the facts
//! its next step is decided from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context};

use super::fetch::{Extract, Fetcher};
use super::provenance::{Requirement, Trust};
use super::source::Source;
use super::step::{ArtifactFacts, ArtifactStep};
use super::{digest, probe, unpack, InstalledShim, SignatureRecord};
use crate::arch::Arch;
use crate::clock::now_rfc3339;
use crate::host::exec::HostExec;
use crate::host::{atomic, HostRoot, InstallLayout};
use crate::settings::{ArtifactSettings, Shim, Verify};

pub struct ArtifactStore {
    layout: InstallLayout,
    settings: ArtifactSettings,
    /// Built on the first download: most reconciles never download, and an HTTPS client with its
    /// root store is the largest allocation an idle agent would otherwise keep.
    fetcher: std::sync::OnceLock<Fetcher>,
    ca_bundle: Option<Vec<u8>>,
    exec: HostExec,
    host: HostRoot,
    /// Digests of installed binaries by file identity: a resync re-hashes a binary only when it
    /// changed on disk (a 30 MiB shim takes ~100 ms to hash; a no-op reconcile should take ~1 ms).
    digests: Mutex<HashMap<PathBuf, (FileId, String)>>,
}

/// A regular file as it is on disk: any write changes its ctime, which nobody can set back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    Unchanged,
    FromCache,
    Downloaded { bytes: u64 },
}

impl ArtifactStore {
    pub fn new(
        host: &HostRoot,
        layout: InstallLayout,
        settings: &ArtifactSettings,
    ) -> anyhow::Result<Self> {
        let ca = match &settings.ca_bundle {
            None => None,
            Some(bundle) => {
                let p = host.resolve(bundle)?;
                Some(
                    std::fs::read(&p)
                        .with_context(|| format!("reading artifacts.ca_bundle {}", p.display()))?,
                )
            }
        };
        Ok(Self {
            fetcher: std::sync::OnceLock::new(),
            ca_bundle: ca,
            exec: HostExec::new(host),
            host: host.clone(),
            digests: Mutex::new(HashMap::new()),
            layout,
            settings: settings.clone(),
        })
    }

    fn fetcher(&self) -> anyhow::Result<&Fetcher> {
        if let Some(f) = self.fetcher.get() {
            return Ok(f);
        }
        let f = Fetcher::new(&self.settings, self.ca_bundle.as_deref())?;
        Ok(self.fetcher.get_or_init(|| f))
    }

    /// What the host holds for this shim, read from disk (its step is decided from these facts).
    pub async fn facts(&self, shim: &Shim, installed: Option<&InstalledShim>) -> ArtifactFacts {
        let installed = installed.cloned();
        let installed_binary_sha256 = match &installed {
            Some(r) => self
                .binary_digest(&self.layout.bin_path(&shim.binary))
                .await
                .filter(|d| *d == r.binary_sha256),
            None => None,
        };
        let cached_archives = shim
            .platforms
            .iter()
            .filter_map(|p| p.sha256.clone())
            .chain(installed.iter().map(|r| r.archive_sha256.clone()))
            .filter(|d| self.cache_path(d).is_file())
            .collect();
        ArtifactFacts {
            installed,
            installed_binary_sha256,
            cached_archives,
            host_bin_path: self.layout.host_bin_path(&shim.binary),
        }
    }

    /// The digest of a file on disk, hashed off the async thread and only when the file changed.
    pub async fn binary_digest(&self, path: &Path) -> Option<String> {
        let id = FileId::of(path)?;
        if let Ok(known) = self.digests.lock() {
            if let Some((_, d)) = known.get(path).filter(|(k, _)| *k == id) {
                return Some(d.clone());
            }
        }
        let p = path.to_owned();
        let d = tokio::task::spawn_blocking(move || digest::file_sha256(&p))
            .await
            .ok()?
            .ok()?;
        if let Ok(mut known) = self.digests.lock() {
            known.insert(path.to_owned(), (id, d.clone()));
        }
        Some(d)
    }

    pub fn cache_path(&self, sha256: &str) -> PathBuf {
        self.layout.cache_dir().join(sha256.to_ascii_lowercase())
    }

    /// Remove what a killed agent left in staging (never visible to containerd).
    pub fn clean_staging(&self) {
        if let Ok(rd) = std::fs::read_dir(self.layout.staging_dir()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Carry out the artifact step for one shim. The returned record describes the binary now durable
    /// on disk (the caller saves it in the state right after); None: nothing changed.
    pub async fn install(
        &self,
        shim: &Shim,
        arch: Arch,
        step: &ArtifactStep,
        previous: Option<&InstalledShim>,
    ) -> anyhow::Result<(Installed, Option<InstalledShim>)> {
        let (url, expected) = match step {
            ArtifactStep::UpToDate => return Ok((Installed::Unchanged, None)),
            ArtifactStep::Unavailable(reason) => return Err(anyhow!("{reason}")),
            ArtifactStep::FromCache { url, sha256 } | ArtifactStep::Download { url, sha256 } => {
                (url, sha256.as_deref())
            }
        };
        // Trust material is read first: a missing trust root fails before any download.
        let trust = match &shim.verify {
            Some(v) => Some(self.trust(v)?),
            None => None,
        };
        let got = self.obtain(shim, arch, url, expected).await?;
        crate::timeline::mark("download");
        let signature = verify_signature(shim, trust, &got.unpacked)?;
        let version_path = self.put_in_place(shim, got.binary, &got.unpacked).await?;
        let record = InstalledShim {
            name: shim.name.clone(),
            version: shim.version.clone(),
            arch,
            url: url.clone(),
            archive_sha256: got.archive_sha256,
            binary_sha256: got.unpacked.binary_sha256,
            binary_path: self.layout.host_bin_path(&shim.binary),
            retired: retired_versions(previous, &version_path),
            version_path: Some(version_path),
            installed_at: now_rfc3339(),
            link: previous.and_then(|r| r.link.clone()),
            signature,
        };
        Ok((got.how, Some(record)))
    }

    /// The shim's binary, unpacked and staged (not yet visible): from the verified cache when it
    /// holds the archive, else downloaded (digest checked on the stream).
    async fn obtain(
        &self,
        shim: &Shim,
        arch: Arch,
        url: &str,
        expected: Option<&str>,
    ) -> anyhow::Result<Obtained> {
        let extract = Extract {
            binary: shim.binary.clone(),
            members: shim
                .verify
                .as_ref()
                .map(|v| Requirement::members(v, &shim.binary))
                .unwrap_or_default(),
            staging_dir: self.layout.staging_dir(),
            dest: self.layout.bin_path(&shim.binary),
        };
        if let Some(sha) = expected.filter(|s| self.cache_path(s).is_file()) {
            match self
                .unpack_cached(sha, &extract, self.settings.max_size.as_u64())
                .await
            {
                Ok((unpacked, binary)) => {
                    let how = Installed::FromCache;
                    let archive_sha256 = sha.to_owned();
                    return Ok(Obtained {
                        how,
                        archive_sha256,
                        unpacked,
                        binary,
                    });
                }
                Err(e) => {
                    tracing::warn!(shim = %shim.name, error = %format!("{e:#}"), "cached archive unusable; downloading again")
                }
            }
        }
        let source = Source::resolve(url, &self.settings)?;
        tracing::info!(shim = %shim.name, version = %shim.version, %arch, from = %source.display(),
            sha256 = expected.unwrap_or("(unverified)"), "fetching shim");
        let partial = self.layout.partial_dir().join(match expected {
            Some(s) => format!("{}.part", s.to_ascii_lowercase()),
            None => format!("unverified-{}.part", shim.name),
        });
        let fetched = self
            .fetcher()?
            .fetch(
                &source,
                expected,
                &partial,
                |d| self.cache_path(d),
                &extract,
            )
            .await?;
        Ok(Obtained {
            how: Installed::Downloaded {
                bytes: fetched.size,
            },
            archive_sha256: fetched.archive_sha256,
            unpacked: fetched.unpacked,
            binary: fetched.binary,
        })
    }

    /// The staged binary, proven to start on this host, committed under `versions/<digest>/` and
    /// `bin/<binary>` switched to it atomically; returns the version's host path.
    async fn put_in_place(
        &self,
        shim: &Shim,
        mut staged: atomic::PendingFile,
        unpacked: &unpack::Unpacked,
    ) -> anyhow::Result<PathBuf> {
        staged.seal()?;
        let temp = self.layout.host_path(staged.temp_path())?;
        let says = probe::shim_starts(&self.exec, &temp).await?;
        tracing::debug!(shim = %shim.name, version = %says, "shim binary starts on this host");
        let digest = &unpacked.binary_sha256;
        let real = self.layout.version_path(&shim.binary, digest);
        let version_dir = real.parent().unwrap_or(&real);
        std::fs::create_dir_all(version_dir)
            .with_context(|| format!("creating {}", version_dir.display()))?;
        staged
            .commit_to(&real)
            .with_context(|| format!("installing {}", real.display()))?;
        // Relative, so the link resolves the same as the host sees it and as the agent does.
        let target = Path::new("..").join(real.strip_prefix(&self.layout.dir).unwrap_or(&real));
        atomic::point_symlink(&self.layout.bin_path(&shim.binary), &target)?;
        let version_path = self.layout.host_version_path(&shim.binary, digest);
        tracing::info!(shim = %shim.name, path = %self.layout.host_bin_path(&shim.binary).display(),
            version = %version_path.display(), binary_sha256 = %digest, bytes = unpacked.size,
            "shim binary installed");
        Ok(version_path)
    }

    /// The certificates or key a shim's signature is checked against, read from the host.
    fn trust(&self, verify: &Verify) -> anyhow::Result<Trust> {
        Trust::load(verify, |key, p| {
            let file = self.host.resolve(p)?;
            std::fs::read(&file).with_context(|| format!("reading verify.{key} {}", file.display()))
        })
    }

    /// Unpack from the cache, re-verifying the archive as it is read (a cache file damaged on disk is
    /// caught here, removed, and downloaded again).
    async fn unpack_cached(
        &self,
        sha256: &str,
        extract: &Extract,
        max: u64,
    ) -> anyhow::Result<(unpack::Unpacked, atomic::PendingFile)> {
        let path = self.cache_path(sha256);
        let mut out = atomic::PendingFile::create_in(&extract.staging_dir, &extract.dest, 0o755)?;
        let binary = extract.binary.clone();
        let members = extract.members.clone();
        let want = sha256.to_ascii_lowercase();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let mut r = digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f));
            let mut w = out.write_behind()?;
            let unpacked = unpack::unpack(&mut r, &binary, &members, &mut w, max)?;
            std::io::Write::flush(&mut w)?;
            drop(w);
            std::io::copy(&mut r, &mut std::io::sink())?;
            let (got, _) = r.finish();
            if got != want {
                let _ = std::fs::remove_file(&path);
                anyhow::bail!(
                    "cache file {} has digest {got}, expected {want}; removed",
                    path.display()
                );
            }
            Ok((unpacked, out))
        })
        .await?
    }
}
/// What `obtain` staged, and where it came from.
struct Obtained {
    how: Installed,
    archive_sha256: String,
    unpacked: unpack::Unpacked,
    binary: atomic::PendingFile,
}

/// The shim's `verify` checked over the unpacked binary; None when it asks for no signature.
fn verify_signature(
    shim: &Shim,
    trust: Option<Trust>,
    unpacked: &unpack::Unpacked,
) -> anyhow::Result<Option<SignatureRecord>> {
    let (Some(verify), Some(trust)) = (&shim.verify, trust) else {
        return Ok(None);
    };
    let req = Requirement {
        verify,
        binary: &shim.binary,
        trust,
    };
    let signer = req
        .check_now(&unpacked.binary_sha256, &unpacked.members)
        .map_err(|e| anyhow!("signature check failed, nothing installed: {e}"))?;
    tracing::info!(shim = %shim.name, signer = %signer, "shim signature verified");
    Ok(Some(SignatureRecord {
        requirement: verify.requirement(),
        signer: signer.0,
    }))
}

/// The versions the new one replaces stay while processes run them (containers keep their shim).
fn retired_versions(previous: Option<&InstalledShim>, current: &Path) -> Vec<PathBuf> {
    let mut retired = previous.map(|r| r.retired.clone()).unwrap_or_default();
    if let Some(old) = previous.and_then(|r| r.version_path.clone()) {
        if old != current && !retired.contains(&old) {
            retired.push(old);
        }
    }
    retired.retain(|p| p != current);
    retired
}
