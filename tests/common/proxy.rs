//! A TCP proxy a test can cut, to take a server away from a job for a while (included by the
//! tests that need it: `#[path = "common/proxy.rs"] mod proxy;`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP proxy the test can cut: every connection is dropped and new ones are refused while it
/// is stopped.
pub struct Proxy {
    port: u16,
    target: u16,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    running: Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn new(port: u16, target: u16) -> Proxy {
        let mut p = Proxy {
            port,
            target,
            connections: Default::default(),
            running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            acceptor: None,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        use std::sync::atomic::Ordering;
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("proxy: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("proxy cannot listen on {}: {e}", self.port),
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        self.running.store(true, Ordering::SeqCst);
        let (running, connections, target) = (self.running.clone(), self.connections.clone(), self.target);
        self.acceptor = Some(std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).ok();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        let mut list = connections.lock().expect("lock");
                        for (mut from, mut to) in [
                            (client.try_clone().expect("clone"), server.try_clone().expect("clone")),
                            (server.try_clone().expect("clone"), client.try_clone().expect("clone")),
                        ] {
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 64 * 1024];
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                from.shutdown(std::net::Shutdown::Both).ok();
                                to.shutdown(std::net::Shutdown::Both).ok();
                            });
                        }
                        list.push(client);
                        list.push(server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    pub fn stop(&mut self) {
        self.running.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            a.join().ok();
        }
        for c in self.connections.lock().expect("lock").drain(..) {
            c.shutdown(std::net::Shutdown::Both).ok();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}
