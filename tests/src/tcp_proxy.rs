//! A TCP relay on loopback between a client and the API server, to break connections the way a
//! network does: `silence` makes every connection open now go quiet in both directions without a
//! FIN or a reset (a NAT or load balancer that forgot it; bytes are swallowed), while connections
//! made afterwards pass. The bytes are TLS end to end; the relay sees none of them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct TcpProxy {
    pub port: u16,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    /// A relay to 127.0.0.1:`upstream`, listening on a port of its own.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", crate::kube_api::free_port())).unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (gen, stopped) = (generation.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let born = gen.load(Ordering::Relaxed);
                relay(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    born,
                    gen.clone(),
                );
                relay(server, client, born, gen.clone());
            }
        });
        Self {
            port,
            generation,
            stop,
        }
    }

    /// Every connection open now goes quiet for good (its peers are not told).
    pub fn silence(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copy `from` to `to` until either closes; once the relay's generation moved past `born`, read
/// and drop instead (the peer keeps its window open, and hears nothing).
fn relay(mut from: TcpStream, mut to: TcpStream, born: u64, generation: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if generation.load(Ordering::Relaxed) != born {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        if generation.load(Ordering::Relaxed) == born {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
