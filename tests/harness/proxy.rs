//! A TCP proxy between a host and a Redis, which can hold back the reply to
//! one chosen request: what a network or a stalled server does to a reply
//! the request of which was already carried out; or hold back the request
//! itself, as a network does to a request that arrives late.
//!
//! Plain threads and blocking sockets, so that it runs on whatever the test
//! does with its own runtime. Bytes from the client are forwarded at once;
//! when a client sends a request containing an armed marker (a script's
//! SHA-1, say), the next bytes the server sends back to that client are held
//! for the armed delay; or, armed to cut, the request is dropped and the
//! connection closed, as a network failure would. Only the first such
//! request is affected: a retry of the same request gets through.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A running proxy; stops accepting when dropped (connections it carries
/// end with their endpoints).
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    armed: Armed,
}

/// What to do to the next request containing a marker.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Hold its reply back this long.
    Delay(Duration),
    /// Hold the request itself (and what follows it on its connection)
    /// back this long, then deliver it.
    Late(Duration),
    /// Drop it and close the connection.
    Cut,
}

type Armed = Arc<Mutex<Option<(Vec<u8>, Fault)>>>;

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` there.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("local addr").port();
        let armed: Armed = Arc::default();
        let shared = armed.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                connect(client, server, shared.clone());
            }
        });
        Proxy { port, armed }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds back, by `delay`, the reply to the next request (on any
    /// connection) whose bytes contain `marker`.
    pub fn delay_reply_to(&self, marker: &str, delay: Duration) {
        *self.armed.lock().expect("proxy") =
            Some((marker.as_bytes().to_vec(), Fault::Delay(delay)));
    }

    /// Holds back, by `delay`, the next request (on any connection) whose
    /// bytes contain `marker`, and whatever its connection sends after it:
    /// the server sees the request only then.
    pub fn delay_request(&self, marker: &str, delay: Duration) {
        *self.armed.lock().expect("proxy") = Some((marker.as_bytes().to_vec(), Fault::Late(delay)));
    }

    /// Drops the next request (on any connection) whose bytes contain
    /// `marker`, and closes its connection: the request never arrives.
    pub fn cut_at(&self, marker: &str) {
        *self.armed.lock().expect("proxy") = Some((marker.as_bytes().to_vec(), Fault::Cut));
    }

    /// Whether the armed delay was used up.
    pub fn fired(&self) -> bool {
        self.armed.lock().expect("proxy").is_none()
    }
}

/// Carries one connection both ways.
fn connect(client: TcpStream, server: TcpStream, armed: Armed) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The delay the next reply on this connection gets, if any.
    let pending: Arc<Mutex<Option<Duration>>> = Arc::default();
    let (mut from_client, mut to_server) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (mut from_server, mut to_client) = (server, client);
    let hold = pending.clone();
    let client_side = to_client.try_clone().expect("clone");
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_client.read(&mut buf) {
            if n == 0 {
                break;
            }
            let fault = {
                let mut armed = armed.lock().expect("proxy");
                match armed.as_ref() {
                    Some((marker, fault))
                        if buf[..n]
                            .windows(marker.len())
                            .any(|w| w == marker.as_slice()) =>
                    {
                        let fault = *fault;
                        *armed = None;
                        Some(fault)
                    }
                    _ => None,
                }
            };
            match fault {
                Some(Fault::Delay(delay)) => *hold.lock().expect("proxy") = Some(delay),
                Some(Fault::Late(delay)) => thread::sleep(delay),
                Some(Fault::Cut) => {
                    let _ = client_side.shutdown(Shutdown::Both);
                    break;
                }
                None => {}
            }
            if to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_server.read(&mut buf) {
            if n == 0 {
                break;
            }
            let delay = pending.lock().expect("proxy").take();
            if let Some(delay) = delay {
                thread::sleep(delay);
            }
            if to_client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Write);
    });
}
