//! Download an artifact once: the bytes are hashed and written to the partial file as they arrive and,
//! in parallel, streamed to an unpack thread that writes the binary to a staging file. Nothing becomes
//! visible until the archive's digest is verified. Interrupted downloads resume with an HTTP Range
//! request (after a retry or after the agent was killed).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::source::Source;
use super::unpack::{unpack, Unpacked};
use crate::backoff::Backoff;
use crate::host::atomic::PendingFile;
use crate::settings::ArtifactSettings;

/// Why an attempt failed, and whether another attempt can help.
enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

type Body = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub struct Fetcher {
    client: reqwest::Client,
    settings: ArtifactSettings,
}

/// What to take out of the artifact and where it goes once verified.
pub struct Extract {
    pub binary: String,
    /// Archive members kept beside the binary (a signature, a certificate).
    pub members: Vec<String>,
    pub staging_dir: PathBuf,
    pub dest: PathBuf,
}

pub struct Fetched {
    pub archive_sha256: String,
    pub size: u64,
    pub unpacked: Unpacked,
    /// The verified binary, still in staging: the caller commits it.
    pub binary: PendingFile,
}

impl Fetcher {
    /// `ca_bundle` is the PEM text of extra trusted CAs (already read from the host).
    pub fn new(settings: &ArtifactSettings, ca_bundle: Option<&[u8]>) -> anyhow::Result<Self> {
        let allow_http = settings.allow_http;
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("kwasm-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .redirect(reqwest::redirect::Policy::custom(move |a| {
                if a.previous().len() >= 10 {
                    a.error("more than 10 redirects")
                } else if a.url().scheme() == "http" && !allow_http {
                    a.error("redirect to plain http refused (artifacts.allow_http = false)")
                } else {
                    a.follow()
                }
            }));
        if let Some(pem) = ca_bundle {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).context("parsing artifacts.ca_bundle")?
            {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Self {
            client: b.build().context("building the HTTP client")?,
            settings: settings.clone(),
        })
    }

    /// Downloads `source` to `partial` (resuming what is there when `expected` is known), verifies it,
    /// and moves the verified archive to `cache_path`.
    pub async fn fetch(
        &self,
        source: &Source,
        expected: Option<&str>,
        partial: &Path,
        cache_path: impl Fn(&str) -> PathBuf,
        extract: &Extract,
    ) -> anyhow::Result<Fetched> {
        let mut backoff = Backoff::new(self.settings.backoff, self.settings.backoff * 16);
        let mut run = Run::new(
            partial,
            expected.is_some(),
            extract,
            self.settings.max_size.as_u64(),
        )?;
        let started = Instant::now();
        let mut attempt = 0;
        let mut restarted_after_mismatch = false;
        loop {
            attempt += 1;
            match self.attempt(source, &mut run).await {
                Ok(()) => {
                    match check_digest(&mut run, expected, source, &mut restarted_after_mismatch)? {
                        DigestCheck::StartOver => continue,
                        DigestCheck::Matches(digest) => {
                            let dest = cache_path(&digest);
                            let fetched = keep(run, digest, &dest).await?;
                            let secs = started.elapsed().as_secs_f64();
                            tracing::info!(
                                url = %source.display(), bytes = fetched.size, sha256 = %fetched.archive_sha256,
                                seconds = format!("{secs:.3}"),
                                mib_per_s = format!("{:.1}", fetched.size as f64 / 1048576.0 / secs.max(1e-9)),
                                attempts = attempt,
                                "artifact downloaded and verified"
                            );
                            return Ok(fetched);
                        }
                    }
                }
                Err(Failure::Fatal(e)) => {
                    if run.unpack_failed {
                        let _ = std::fs::remove_file(partial);
                    }
                    return Err(e);
                }
                Err(Failure::Retry(e)) if attempt >= self.settings.attempts => {
                    return Err(e.context(format!("giving up after {attempt} attempts")));
                }
                Err(Failure::Retry(e)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(url = %source.display(), attempt, error = %format!("{e:#}"),
                        retry_in_ms = delay.as_millis() as u64, "download failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, source: &Source, run: &mut Run<'_>) -> Result<(), Failure> {
        run.sync_with_partial().await.map_err(Failure::Fatal)?;
        let offset = run.fed;
        let (body, total) = match source {
            Source::Http(url) => self.open_http(url, offset, run).await?,
            Source::File(path) => open_file(path, offset).await?,
        };
        if let Some(total) = total.filter(|t| *t > self.settings.max_size.as_u64()) {
            return Err(Failure::Fatal(anyhow!(
                "{} is {total} bytes, more than artifacts.max_size ({})",
                source.display(),
                self.settings.max_size
            )));
        }
        run.stream(body, total, self.settings.read_timeout, source)
            .await
    }

    async fn open_http(
        &self,
        url: &url::Url,
        offset: u64,
        run: &mut Run<'_>,
    ) -> Result<(Body, Option<u64>), Failure> {
        let mut req = self.client.get(url.clone());
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().await.map_err(|e| {
            if is_certificate_error(&e) {
                // Retrying cannot make an untrusted certificate trusted.
                Failure::Fatal(anyhow!(e).context(format!(
                    "the TLS certificate of {url} is not trusted (for a private mirror's CA set artifacts.ca_bundle)"
                )))
            } else if e.is_redirect() {
                // A refused redirect (to plain http, or too many) is refused again on every try.
                Failure::Fatal(anyhow!(e).context(format!("requesting {url}")))
            } else {
                Failure::Retry(anyhow!(e).context(format!("requesting {url}")))
            }
        })?;
        let status = resp.status();
        let len = resp.content_length();
        let total = match status.as_u16() {
            206 if offset > 0 && content_range_starts_at(&resp, offset) => len.map(|l| l + offset),
            200 | 206 => {
                if offset > 0 {
                    tracing::info!(%url, offset, "server did not resume the download; starting over");
                    run.reset().map_err(Failure::Fatal)?;
                }
                len
            }
            416 => {
                run.reset().map_err(Failure::Fatal)?;
                return Err(Failure::Retry(anyhow!(
                    "HTTP 416 resuming {url} at byte {offset}; starting over"
                )));
            }
            400..=499 => {
                return Err(Failure::Fatal(anyhow!(
                    "HTTP {status} from {url}; not retrying a client error"
                )))
            }
            _ => return Err(Failure::Retry(anyhow!("HTTP {status} from {url}"))),
        };
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other));
        Ok((Box::pin(body), total))
    }
}

/// The body's next chunk (None at its end); silence for `idle` is a failure worth retrying.
async fn next_chunk(
    body: &mut Body,
    idle: Duration,
    source: &Source,
    fed: u64,
) -> Result<Option<Bytes>, Failure> {
    let silent = || {
        Failure::Retry(anyhow!(
            "no data from {} for {} (artifacts.read_timeout) after {fed} bytes",
            source.display(),
            humantime::format_duration(idle),
        ))
    };
    match tokio::time::timeout(idle, body.next()).await {
        Err(_) => Err(silent()),
        Ok(None) => Ok(None),
        Ok(Some(Ok(c))) => Ok(Some(c)),
        Ok(Some(Err(e))) if is_timeout(&e) => Err(silent()),
        Ok(Some(Err(e))) => Err(Failure::Retry(
            anyhow!(e).context(format!("reading {} after {fed} bytes", source.display())),
        )),
    }
}

enum DigestCheck {
    Matches(String),
    /// A resumed download did not match: once, it is fetched again from the start.
    StartOver,
}

/// The whole body arrived: does it hash to what was asked? A mismatch removes the download.
fn check_digest(
    run: &mut Run<'_>,
    expected: Option<&str>,
    source: &Source,
    restarted_after_mismatch: &mut bool,
) -> anyhow::Result<DigestCheck> {
    let digest = hex::encode(run.hasher.clone().finalize());
    let Some(want) = expected.filter(|w| !w.eq_ignore_ascii_case(&digest)) else {
        return Ok(DigestCheck::Matches(digest));
    };
    if run.resumed_from > 0 && !*restarted_after_mismatch {
        // The leftover partial may predate a change upstream: one clean try.
        tracing::warn!(url = %source.display(), "digest mismatch after resuming; downloading again from the start");
        *restarted_after_mismatch = true;
        run.reset()?;
        return Ok(DigestCheck::StartOver);
    }
    let _ = std::fs::remove_file(run.partial);
    Err(anyhow!(
        "sha256 mismatch for {}: expected {want}, got {digest}; nothing was installed",
        source.display()
    ))
}

/// A verified download: its unpacked binary, and the archive kept under `dest` in the cache.
async fn keep(run: Run<'_>, digest: String, dest: &Path) -> anyhow::Result<Fetched> {
    let (size, partial) = (run.fed, run.partial);
    let (unpacked, binary) = run.finish().await?;
    std::fs::rename(partial, dest)
        .with_context(|| format!("moving {} to {}", partial.display(), dest.display()))?;
    Ok(Fetched {
        archive_sha256: digest,
        size,
        unpacked,
        binary,
    })
}

/// Is a rustls certificate rejection somewhere in the chain? io::Error's `source()` skips the error
/// it wraps, so wrapped errors are looked into explicitly.
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if is_certificate_error(inner) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// reqwest's own read timeout, surfacing from the body stream.
fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<reqwest::Error>())
            .is_some_and(|r| r.is_timeout())
}

fn content_range_starts_at(resp: &reqwest::Response, offset: u64) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with(&format!("bytes {offset}-")))
        .unwrap_or(false)
}

async fn open_file(path: &Path, offset: u64) -> Result<(Body, Option<u64>), Failure> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::Fatal(anyhow!(e).context(format!("opening {}", path.display()))))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| Failure::Fatal(e.into()))?
        .len();
    use tokio::io::AsyncSeekExt;
    f.seek(SeekFrom::Start(offset.min(len)))
        .await
        .map_err(|e| Failure::Fatal(e.into()))?;
    Ok((
        Box::pin(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10)),
        Some(len),
    ))
}

/// One download in progress: the partial file, the running digest, and the unpack thread fed with the
/// same bytes. `fed` bytes have gone to all three.
struct Run<'a> {
    partial: &'a Path,
    file: std::fs::File,
    hasher: Sha256,
    job: UnpackJob,
    fed: u64,
    resumed_from: u64,
    resumable: bool,
    extract: &'a Extract,
    max: u64,
    unpack_failed: bool,
}

impl<'a> Run<'a> {
    fn new(
        partial: &'a Path,
        resumable: bool,
        extract: &'a Extract,
        max: u64,
    ) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(partial)
            .with_context(|| format!("opening {}", partial.display()))?;
        if !resumable {
            file.set_len(0)?;
        }
        Ok(Self {
            partial,
            file,
            hasher: Sha256::new(),
            job: UnpackJob::spawn(extract, max)?,
            fed: 0,
            resumed_from: 0,
            resumable,
            extract,
            max,
            unpack_failed: false,
        })
    }

    /// Start over from byte 0.
    fn reset(&mut self) -> anyhow::Result<()> {
        self.file.set_len(0)?;
        self.hasher = Sha256::new();
        self.job = UnpackJob::spawn(self.extract, self.max)?;
        self.fed = 0;
        self.resumed_from = 0;
        Ok(())
    }

    /// Feed what is already in the partial file (left by a killed agent, or written by an attempt that
    /// failed after some bytes were durable) so the digest and the unpacker see the whole archive.
    async fn sync_with_partial(&mut self) -> anyhow::Result<()> {
        let on_disk = self.file.metadata()?.len();
        if on_disk == self.fed {
            return Ok(());
        }
        if !self.resumable || on_disk < self.fed {
            return self.reset();
        }
        let mut f = std::fs::File::open(self.partial)?;
        f.seek(SeekFrom::Start(self.fed))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            self.hasher.update(&chunk);
            self.job.feed(chunk).await;
            self.fed += n as u64;
        }
        if self.resumed_from == 0 {
            self.resumed_from = self.fed;
            tracing::info!(partial = %self.partial.display(), bytes = self.fed, "resuming an interrupted download");
        }
        Ok(())
    }

    async fn stream(
        &mut self,
        mut body: Body,
        total: Option<u64>,
        idle: Duration,
        source: &Source,
    ) -> Result<(), Failure> {
        let mut last_log = Instant::now();
        while let Some(chunk) = next_chunk(&mut body, idle, source, self.fed).await? {
            self.take(chunk, source).await?;
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(url = %source.display(), bytes = self.fed, total, "downloading");
            }
        }
        match total {
            Some(t) if self.fed < t => Err(Failure::Retry(anyhow!(
                "download of {} ended early: {} of {t} bytes",
                source.display(),
                self.fed
            ))),
            _ => Ok(()),
        }
    }

    /// One chunk into the partial file, the digest and the unpacker.
    async fn take(&mut self, chunk: Bytes, source: &Source) -> Result<(), Failure> {
        if self.fed + chunk.len() as u64 > self.max {
            return Err(Failure::Fatal(anyhow!(
                "{} is larger than artifacts.max_size ({} bytes)",
                source.display(),
                self.max
            )));
        }
        self.file
            .write_all(&chunk)
            .map_err(|e| Failure::Fatal(anyhow!(e).context("writing the download")))?;
        self.hasher.update(&chunk);
        self.fed += chunk.len() as u64;
        if !self.job.feed(chunk).await && self.job.failed_early().await {
            self.unpack_failed = true;
            let err = self.job.take_error().await;
            return Err(Failure::Fatal(err));
        }
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<(Unpacked, PendingFile)> {
        self.job.finish().await
    }
}

/// The unpack thread and the channel that feeds it.
struct UnpackJob {
    tx: Option<mpsc::Sender<Bytes>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<(Unpacked, PendingFile)>>>,
    result: Option<anyhow::Result<(Unpacked, PendingFile)>>,
}

impl UnpackJob {
    fn spawn(extract: &Extract, max: u64) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut out = PendingFile::create_in(&extract.staging_dir, &extract.dest, 0o755)?;
        let binary = extract.binary.clone();
        let members = extract.members.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader {
                rx,
                cur: Bytes::new(),
            };
            let mut w = out.write_behind()?;
            let unpacked = unpack(&mut reader, &binary, &members, &mut w, max)?;
            w.flush()?;
            drop(w);
            Ok((unpacked, out))
        });
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
            result: None,
        })
    }

    /// False once the unpacker stopped reading (done, or failed).
    async fn feed(&mut self, chunk: Bytes) -> bool {
        match &self.tx {
            Some(tx) if tx.send(chunk).await.is_ok() => true,
            _ => {
                self.tx = None;
                false
            }
        }
    }

    async fn join(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            self.result = Some(
                h.await
                    .unwrap_or_else(|e| Err(anyhow!("unpack thread failed: {e}"))),
            );
        }
    }

    async fn failed_early(&mut self) -> bool {
        self.join().await;
        matches!(self.result, Some(Err(_)))
    }

    async fn take_error(&mut self) -> anyhow::Error {
        self.join().await;
        match self.result.take() {
            Some(Err(e)) => e,
            _ => anyhow!("unpack thread ended without an error"),
        }
    }

    async fn finish(mut self) -> anyhow::Result<(Unpacked, PendingFile)> {
        self.join().await;
        self.result
            .take()
            .unwrap_or_else(|| Err(anyhow!("the unpack thread's result was already taken")))
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}
