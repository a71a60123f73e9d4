//! A real HTTP/1.1 server on loopback that serves artifacts — and misbehaves on request: errors,
//! truncated and stalled bodies, redirects, slow bodies. It also answers as a forward proxy (absolute-form
//! request targets), so proxy settings can be shown to be honoured. Written on TcpListener because the
//! failures it must produce are below what an HTTP framework lets a handler do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with the body (206 for a satisfiable Range request).
    Serve(Vec<u8>),
    Status(u16),
    /// Announces the whole length, sends `after` bytes, closes the connection.
    Truncate {
        body: Vec<u8>,
        after: usize,
    },
    /// Announces the whole length, sends `after` bytes, then sends nothing until the server stops.
    Stall {
        body: Vec<u8>,
        after: usize,
    },
    Redirect(String),
    /// Sends the body in `chunk`-byte pieces with `pause` between them.
    Slow {
        body: Vec<u8>,
        chunk: usize,
        pause: Duration,
    },
    /// Ignores Range headers (always 200 with the whole body).
    NoRange(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent: a path, or an absolute URL when we are used as a proxy.
    pub target: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Vec<Behavior>>,
    log: Vec<Request>,
    stopping: bool,
}

pub struct ArtifactServer {
    addr: SocketAddr,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    accept: Option<thread::JoinHandle<()>>,
}

impl ArtifactServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s2 = shared.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.0.lock().unwrap().stopping {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                thread::spawn(move || {
                    let _ = handle(conn, &s3);
                });
            }
        });
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each request to `path` takes the next behavior; the last one repeats.
    pub fn route(&self, path: &str, behaviors: Vec<Behavior>) {
        self.shared
            .0
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), behaviors);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.0.lock().unwrap().log.clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }

    pub fn clear_log(&self) {
        self.shared.0.lock().unwrap().log.clear();
    }
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap().stopping = true;
        self.shared.1.notify_all();
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A request's line and the one header the server acts on.
struct Asked {
    method: String,
    target: String,
    /// The path, also when the target is absolute (as a proxy is asked).
    path: String,
    range: Option<String>,
}

fn read_request(conn: &TcpStream) -> std::io::Result<Asked> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            }
        }
    }
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map(|i| rest[i..].to_owned())
            .unwrap_or_else(|| "/".into()),
        None => target.clone(),
    };
    Ok(Asked {
        method,
        target,
        path,
        range,
    })
}

fn handle(conn: TcpStream, shared: &Arc<(Mutex<Shared>, Condvar)>) -> std::io::Result<()> {
    let Asked {
        method,
        target,
        path,
        range,
    } = read_request(&conn)?;
    let behavior = {
        let mut s = shared.0.lock().unwrap();
        s.log.push(Request {
            method,
            target,
            path: path.clone(),
            range: range.clone(),
        });
        match s.routes.get_mut(&path) {
            Some(q) if q.len() > 1 => Some(q.remove(0)),
            Some(q) => q.first().cloned(),
            None => None,
        }
    };
    let mut out = conn;
    match behavior {
        None => respond(&mut out, 404, &[], b"not found"),
        Some(Behavior::Status(code)) => respond(&mut out, code, &[], b"error"),
        Some(Behavior::Redirect(to)) => respond(&mut out, 302, &[("Location", to)], b""),
        Some(Behavior::Serve(body)) => serve_range(&mut out, &body, range.as_deref()),
        Some(Behavior::NoRange(body)) => respond(&mut out, 200, &[], &body),
        Some(Behavior::Truncate { body, after }) => {
            head(&mut out, 200, body.len(), &[])?;
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()
        }
        Some(Behavior::Stall { body, after }) => {
            head(&mut out, 200, body.len(), &[])?;
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()?;
            let (lock, cv) = &**shared;
            let mut g = lock.lock().unwrap();
            while !g.stopping {
                g = cv.wait(g).unwrap();
            }
            Ok(())
        }
        Some(Behavior::Slow { body, chunk, pause }) => {
            let (start, status) = range_start(range.as_deref(), body.len());
            let rest = &body[start..];
            let extra = content_range(status, start, body.len());
            head(&mut out, status, rest.len(), &extra)?;
            for piece in rest.chunks(chunk) {
                out.write_all(piece)?;
                out.flush()?;
                if shared.0.lock().unwrap().stopping {
                    break;
                }
                thread::sleep(pause);
            }
            Ok(())
        }
    }
}

fn range_start(range: Option<&str>, len: usize) -> (usize, u16) {
    match range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(n) if n < len => (n, 206),
        _ => (0, 200),
    }
}

fn content_range(status: u16, start: usize, len: usize) -> Vec<(&'static str, String)> {
    if status == 206 {
        vec![("Content-Range", format!("bytes {start}-{}/{len}", len - 1))]
    } else {
        vec![]
    }
}

fn serve_range(out: &mut TcpStream, body: &[u8], range: Option<&str>) -> std::io::Result<()> {
    let (start, status) = range_start(range, body.len());
    respond(
        out,
        status,
        &content_range(status, start, body.len()),
        &body[start..],
    )
}

fn head(
    out: &mut TcpStream,
    code: u16,
    len: usize,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {code} X\r\nContent-Length: {len}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())
}

fn respond(
    out: &mut TcpStream,
    code: u16,
    extra: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    head(out, code, body.len(), extra)?;
    out.write_all(body)?;
    out.flush()
}
