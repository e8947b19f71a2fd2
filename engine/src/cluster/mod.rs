//! Forming a multi-process run: connecting the processes, with a timeout and a handshake, and
//! handing the sockets to timely.
//!
//! timely's own formation (`initialize_networking`) trusts whatever connects to a process's port:
//! it reads an 8-byte index and indexes an array with it, panicking on a short read, a closed
//! connection or a large number, and waits forever for a peer that never starts. paystream forms
//! the cluster itself, in the same shape (process i listens on its hosts-file address, connects
//! to every process below it and accepts every process above it), and hands the connected
//! sockets to timely's `initialize_networking_from_sockets`:
//!
//! * every connection runs the [`handshake`] (magic, version, job identity, indices, and an
//!   HMAC over both sides' nonces keyed by the job's secret when there is one), with a read
//!   timeout; one that fails is logged (one `warn` line) and dropped, and the others go on;
//! * connecting retries until the cluster timeout (`--cluster-timeout`, default
//!   [`DEFAULT_TIMEOUT`]); after it the run fails naming every process that never answered or
//!   never connected, by index and address;
//! * a peer lost once the run started ends the run with one error naming it, rather than a
//!   cascade of panics ([`lost`]).
//!
//! What the handshake does not do: encrypt or authenticate timely's data after it. The
//! processes of a job must talk over a private network.

pub mod handshake;
pub mod lost;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use timely::communication::allocator::zero_copy::initialize::{initialize_networking_from_sockets, CommsGuard};
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks};

pub use handshake::Secret;
use handshake::{Failure, Party};

use crate::Result;

/// How long processes wait for each other by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an accepted connection has to complete its handshake: a client that sends nothing
/// is dropped after it, and cannot hold formation up (each runs on its own thread).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes of accepted connections running at once; further connections are dropped until
/// one ends, so a flood of idle connections costs a bounded number of threads.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// One process's part in a multi-process run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The job's name (part of the handshake's job identity).
    pub job: String,
    /// This process's index.
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
    /// Worker threads per process (the same in every process).
    pub workers: usize,
    /// How long to wait for the other processes.
    pub timeout: Duration,
    /// The job's secret, if any.
    pub secret: Option<Secret>,
}

/// A process ready to form the cluster: its listener is bound.
#[derive(Debug)]
pub struct Formation {
    spec: ClusterSpec,
    listener: TcpListener,
}

/// The sockets to every other process, in process order (`None` at this process's index).
pub type Sockets = Vec<Option<TcpStream>>;

impl Formation {
    /// Binds this process's address: a taken port is found before anything starts.
    pub fn bind(spec: ClusterSpec) -> Result<Formation> {
        let own = &spec.addresses[spec.process];
        let listener = TcpListener::bind(own.as_str()).map_err(|e| {
            anyhow!(
                "the hosts file gives this process (--process {}) the address {own}, which cannot be bound: {e}; \
                 pick a free port in the hosts file",
                spec.process
            )
        })?;
        Ok(Formation { spec, listener })
    }

    /// Connects to every other process and runs the handshake on each connection, until all are
    /// connected, the timeout passes, or `halted` says to give up (a cancelled run: then
    /// `Ok(None)`).
    pub fn connect(self, halted: &dyn Fn() -> bool) -> Result<Option<Sockets>> {
        let Formation { spec, listener } = self;
        let processes = spec.addresses.len();
        let deadline = Instant::now() + spec.timeout;
        let party = Arc::new(Party::new(&spec.job, processes, spec.workers, spec.process, spec.secret.clone()));
        let (events, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        for peer in 0..spec.process {
            let (party, events, stop, address) = (party.clone(), events.clone(), stop.clone(), spec.addresses[peer].clone());
            std::thread::Builder::new()
                .name(format!("paystream-connect-{peer}"))
                .spawn(move || dial(peer, &address, &party, deadline, &stop, &events))
                .map_err(|e| anyhow!("cannot start a thread to connect to process {peer}: {e}"))?;
        }
        let acceptor = {
            let (party, events, stop) = (party.clone(), events.clone(), stop.clone());
            listener.set_nonblocking(true).map_err(|e| anyhow!("cannot set up the cluster listener: {e}"))?;
            std::thread::Builder::new()
                .name("paystream-accept".into())
                .spawn(move || accept(listener, party, deadline, &stop, events))
                .map_err(|e| anyhow!("cannot start the cluster listener's thread: {e}"))?
        };
        drop(events);

        let mut sockets: Sockets = (0..processes).map(|_| None).collect();
        let mut last_error: BTreeMap<usize, String> = BTreeMap::new();
        let missing = |sockets: &Sockets| (0..processes).filter(|&p| p != spec.process && sockets[p].is_none()).count();
        let mut cancelled = false;
        while missing(&sockets) > 0 {
            if halted() {
                cancelled = true;
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match received.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(Event::Connected { peer, stream }) if sockets[peer].is_none() => {
                    tracing::debug!(process = spec.process, peer, "connected to process {peer}");
                    sockets[peer] = Some(stream);
                }
                Ok(Event::Connected { peer, stream }) => {
                    let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::warn!(process = spec.process, peer, "refused a second connection as process {peer} from {from}");
                }
                Ok(Event::Refused { from, why }) => {
                    tracing::warn!(process = spec.process, %from, "refused a cluster connection from {from}: {why}");
                }
                Ok(Event::Failed { peer, why }) => {
                    last_error.insert(peer, why);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        stop.store(true, Ordering::Release);
        let _ = acceptor.join();
        if missing(&sockets) == 0 {
            return Ok(Some(sockets));
        }
        if cancelled {
            return Ok(None);
        }
        let absent: Vec<String> = (0..processes)
            .filter(|&p| p != spec.process && sockets[p].is_none())
            .map(|p| {
                let address = &spec.addresses[p];
                match last_error.get(&p) {
                    Some(why) => format!("process {p} ({address}) never answered: {why}"),
                    None if p < spec.process => format!("process {p} ({address}) never answered"),
                    None => format!("process {p} ({address}) never connected"),
                }
            })
            .collect();
        bail!(
            "the cluster did not form within {} (--cluster-timeout): {}; check that every process was started with the \
             same job, --processes, --workers and --hosts file",
            humanize(spec.timeout),
            absent.join("; ")
        )
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// What the connecting and accepting threads report.
enum Event {
    /// A connection to `peer` passed the handshake.
    Connected { peer: usize, stream: TcpStream },
    /// An accepted connection failed the handshake.
    Refused { from: SocketAddr, why: String },
    /// The latest failure to reach `peer` (retried until the deadline).
    Failed { peer: usize, why: String },
}

/// Connects to process `peer` until the handshake succeeds or the deadline passes.
fn dial(peer: usize, address: &str, party: &Party, deadline: Instant, stop: &AtomicBool, events: &mpsc::Sender<Event>) {
    let mut pause = Duration::from_millis(50);
    let mut said = String::new();
    while !stop.load(Ordering::Acquire) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match reach(peer, address, party, left) {
            Ok(stream) => {
                let _ = events.send(Event::Connected { peer, stream });
                return;
            }
            Err((why, refused)) => {
                // Not listening yet is expected while the processes start; a process that
                // answers but fails the handshake is worth a warning (once per reason).
                if refused && why != said {
                    tracing::warn!(peer, %address, "process {peer} at {address} failed the handshake: {why}; retrying");
                } else {
                    tracing::debug!(peer, %address, "connecting to process {peer} at {address}: {why}; retrying");
                }
                said.clone_from(&why);
                let _ = events.send(Event::Failed { peer, why });
            }
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One attempt to connect to `peer` and run the handshake. The error says why, and whether the
/// process answered and refused (rather than not answering at all).
fn reach(peer: usize, address: &str, party: &Party, left: Duration) -> std::result::Result<TcpStream, (String, bool)> {
    let targets: Vec<SocketAddr> = address.to_socket_addrs().map_err(|e| (format!("cannot resolve {address}: {e}"), false))?.collect();
    let mut last = format!("{address} resolves to no address");
    for target in targets {
        let mut stream = match TcpStream::connect_timeout(&target, left.min(Duration::from_secs(5))) {
            Ok(s) => s,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        // The peer may have bound its port but not reached formation yet: wait for its answer up
        // to the deadline.
        let setup = stream.set_read_timeout(Some(left)).and_then(|_| stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)));
        if let Err(e) = setup {
            last = e.to_string();
            continue;
        }
        return match handshake::as_connector(&mut stream, party, peer) {
            Ok(()) => ready_for_timely(stream).map_err(|e| (e.to_string(), false)),
            Err(f @ Failure::Refused(_)) => Err((f.to_string(), true)),
            Err(f) => Err((f.to_string(), false)),
        };
    }
    Err((last, false))
}

/// Accepts connections until `stop` or the deadline, each handshake on its own thread.
fn accept(listener: TcpListener, party: Arc<Party>, deadline: Instant, stop: &AtomicBool, events: mpsc::Sender<Event>) {
    let pending = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!("accepting a cluster connection: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if pending.load(Ordering::Acquire) >= MAX_PENDING_HANDSHAKES {
            tracing::warn!(%from, "refused a cluster connection from {from}: {MAX_PENDING_HANDSHAKES} handshakes already pending");
            continue;
        }
        pending.fetch_add(1, Ordering::AcqRel);
        let (party, events, pending) = (party.clone(), events.clone(), pending.clone());
        let spawned = std::thread::Builder::new().name("paystream-handshake".into()).spawn(move || {
            let timeout = HANDSHAKE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
            let outcome = stream
                .set_nonblocking(false)
                .and_then(|_| stream.set_read_timeout(Some(timeout)))
                .and_then(|_| stream.set_write_timeout(Some(timeout)))
                .map_err(Failure::Io)
                .and_then(|_| handshake::as_acceptor(&mut stream, &party))
                .and_then(|peer| ready_for_timely(stream).map(|stream| (peer, stream)).map_err(Failure::Io));
            let _ = events.send(match outcome {
                Ok((peer, stream)) => Event::Connected { peer, stream },
                Err(f) => Event::Refused { from, why: f.to_string() },
            });
            pending.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            tracing::warn!(%from, "refused a cluster connection from {from}: no thread for its handshake: {e}");
        }
    }
}

/// Puts a socket that passed the handshake in the state timely's network threads expect:
/// blocking, no timeouts, no delay on small writes (as timely's own formation sets it).
fn ready_for_timely(stream: TcpStream) -> std::io::Result<TcpStream> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// timely's allocators for `workers` worker threads on the connected `sockets`, and what keeps
/// its network threads alive (see [`NetworkGuard`]).
pub fn communication(sockets: Sockets, process: usize, workers: usize) -> Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>)> {
    lost::watch();
    let mut clones = Vec::new();
    for socket in sockets.iter().flatten() {
        clones.push(socket.try_clone().map_err(|e| anyhow!("cannot set up the cluster connections: {e}"))?);
    }
    let hooks = Hooks::default();
    let allocators = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(allocators, sockets, process, workers, hooks)
        .map_err(|e| anyhow!("cannot start timely's network threads: {e}"))?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    Ok((builders, Box::new(NetworkGuard { guard: Some(guard), sockets: clones })))
}

/// timely's network threads. Dropping timely's guard joins them and panics if one panicked;
/// after a lost peer this one shuts the sockets down instead (so every other peer sees this
/// process leave at once, rather than waiting on sockets kept open by blocked threads) and
/// leaves the threads to end with the process.
struct NetworkGuard {
    guard: Option<CommsGuard>,
    sockets: Vec<TcpStream>,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else { return };
        if lost::lost_peer().is_some() {
            for socket in &self.sockets {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            std::mem::forget(guard);
            return;
        }
        // A peer lost while the threads end (after the workers finished) makes the join panic;
        // the panic hook has recorded it (and prints nothing), and the run reports it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(guard)));
    }
}
