//! An HTTPS artifact server on loopback with a private CA made by the test: the production path
//! (https only) with a certificate the agent trusts only through `artifacts.ca_bundle`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsServer {
    addr: SocketAddr,
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    /// Serves `body` at `path` (404 elsewhere) on https://127.0.0.1:<port>.
    pub fn start(path: &str, body: Vec<u8>) -> Self {
        Self::serve(path, body, None)
    }

    /// Answers `path` with a redirect to `location`.
    pub fn redirecting(path: &str, location: &str) -> Self {
        Self::serve(path, Vec::new(), Some(location.to_owned()))
    }

    fn serve(path: &str, body: Vec<u8>, redirect: Option<String>) -> Self {
        let (ca_pem, config) = certificates();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, requests2, connections2, path) = (
            stop.clone(),
            requests.clone(),
            connections.clone(),
            path.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                connections2.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(server, tcp);
                let Some(target) = request_target(&mut tls) else {
                    continue; // the client refused our certificate
                };
                requests2.fetch_add(1, Ordering::SeqCst);
                answer(&mut tls, target == path, redirect.as_deref(), &body);
            }
        });
        Self {
            addr,
            ca_pem,
            stop,
            requests,
            connections,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// TCP connections accepted (TLS handshakes attempted).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests that completed the TLS handshake and were answered.
    pub fn served(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A CA made for this server and a leaf for 127.0.0.1 signed by it: the CA's PEM (what a client
/// must be told to trust) and the server's TLS config.
fn certificates() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

/// The path a request asks for, its headers read; None when the handshake failed.
fn request_target(tls: &mut Tls) -> Option<String> {
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
            return Some(target);
        }
    }
}

/// The body (or a redirect to it) for the served path, 404 for any other; then the TLS close.
fn answer(tls: &mut Tls, served_path: bool, redirect: Option<&str>, body: &[u8]) {
    let (code, data): (u16, &[u8]) = match (redirect, served_path) {
        (Some(_), true) => (302, b""),
        (None, true) => (200, body),
        (_, false) => (404, b"not found"),
    };
    let location = match (redirect, code) {
        (Some(l), 302) => format!("Location: {l}\r\n"),
        _ => String::new(),
    };
    let _ = write!(
        tls,
        "HTTP/1.1 {code} X\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    let _ = tls.write_all(data);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
