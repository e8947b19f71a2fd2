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
//!   HMAC over both sides' nonces keyed by the job's secret when there is one), on a thread of
//!   its own and within [`HANDSHAKE_TIMEOUT`] in all; one that fails is logged (one `warn` line,
//!   at most ten a second) and dropped, and the others go on. At most 64 run at once, and a
//!   newcomer displaces the oldest that has not presented a hello for this job, so a flood of
//!   idle connections cannot keep a peer out;
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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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

/// Handshakes of accepted connections running at once (a thread each): a flood of connections
/// costs a bounded number of threads (see [`Waiting`] for who gives way).
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
        let mut last_error: BTreeMap<usize, Miss> = BTreeMap::new();
        let missing = |sockets: &Sockets| (0..processes).filter(|&p| p != spec.process && sockets[p].is_none()).count();
        let mut cancelled = false;
        let mut refusals = LogLimit::default();
        while missing(&sockets) > 0 {
            refusals.report(Instant::now());
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
                    if refusals.admit(Instant::now()) {
                        tracing::warn!(process = spec.process, %from, "refused a cluster connection from {from}: {why}");
                    }
                }
                Ok(Event::Failed { peer, miss }) => {
                    last_error.insert(peer, miss);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        stop.store(true, Ordering::Release);
        let _ = acceptor.join();
        refusals.report(Instant::now() + LogLimit::WINDOW);
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
                    Some(Miss::Unreachable(why)) => format!("process {p} ({address}) never answered: {why}"),
                    Some(Miss::BrokeOff(why) | Miss::Refused(why)) => {
                        format!("process {p} ({address}) answered but did not complete the handshake: {why}")
                    }
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

/// At most [`LogLimit::LINES`] warnings a [`LogLimit::WINDOW`] about refused connections, and then
/// one line with how many more: a flood of connections must not become a flood of log lines.
#[derive(Default)]
struct LogLimit {
    window_start: Option<Instant>,
    logged: usize,
    suppressed: usize,
}

impl LogLimit {
    const LINES: usize = 10;
    const WINDOW: Duration = Duration::from_secs(1);

    /// Whether to log one more refusal now.
    fn admit(&mut self, now: Instant) -> bool {
        self.report(now);
        self.window_start.get_or_insert(now);
        if self.logged < Self::LINES {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Ends the window if it is over, logging how many refusals went unlogged in it.
    fn report(&mut self, now: Instant) {
        let Some(start) = self.window_start else { return };
        if now.duration_since(start) < Self::WINDOW {
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(
                refused = self.suppressed,
                "refused {} more cluster connections within {} s (not logged one by one)",
                self.suppressed,
                Self::WINDOW.as_secs()
            );
        }
        *self = LogLimit::default();
    }
}

/// What the connecting and accepting threads report.
enum Event {
    /// A connection to `peer` passed the handshake.
    Connected { peer: usize, stream: TcpStream },
    /// An accepted connection failed the handshake.
    Refused { from: SocketAddr, why: String },
    /// The latest failure to reach `peer` (retried until the deadline).
    Failed { peer: usize, miss: Miss },
}

/// How an attempt to reach a process failed.
enum Miss {
    /// No connection: not listening (yet), unreachable, unresolvable.
    Unreachable(String),
    /// Connected, but the handshake broke off: it closed the connection or stalled (a process
    /// that refuses says why in its own log).
    BrokeOff(String),
    /// It answered with something that does not fit: another job, a wrong secret.
    Refused(String),
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
            Err(miss) => {
                // Not listening yet is expected while the processes start; a process that
                // answers but fails the handshake is worth a warning (once per reason).
                match &miss {
                    Miss::Unreachable(why) => {
                        tracing::debug!(peer, %address, "connecting to process {peer} at {address}: {why}; retrying")
                    }
                    Miss::BrokeOff(why) | Miss::Refused(why) if *why != said => {
                        tracing::warn!(peer, %address, "process {peer} at {address} did not complete the handshake: {why}; retrying");
                        said.clone_from(why);
                    }
                    Miss::BrokeOff(_) | Miss::Refused(_) => {}
                }
                let _ = events.send(Event::Failed { peer, miss });
            }
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One attempt to connect to `peer` and run the handshake.
fn reach(peer: usize, address: &str, party: &Party, left: Duration) -> std::result::Result<TcpStream, Miss> {
    let targets: Vec<SocketAddr> =
        address.to_socket_addrs().map_err(|e| Miss::Unreachable(format!("cannot resolve {address}: {e}")))?.collect();
    let mut last = format!("{address} resolves to no address");
    for target in targets {
        let stream = match TcpStream::connect_timeout(&target, left.min(Duration::from_secs(5))) {
            Ok(s) => s,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        // The peer may have bound its port but not reached formation yet: wait for its answer up
        // to the deadline.
        let until = Instant::now() + left;
        return match handshake::as_connector(&mut Bounded { stream: &stream, until }, party, peer) {
            Ok(()) => ready_for_timely(stream).map_err(|e| Miss::BrokeOff(e.to_string())),
            Err(f @ Failure::Refused(_)) => Err(Miss::Refused(f.to_string())),
            Err(f) => Err(Miss::BrokeOff(f.to_string())),
        };
    }
    Err(Miss::Unreachable(last))
}

/// Accepts connections until `stop` or the deadline, each handshake on its own thread.
fn accept(listener: TcpListener, party: Arc<Party>, deadline: Instant, stop: &AtomicBool, events: mpsc::Sender<Event>) {
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        let (stream, from) = match listener.accept() {
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
        let Some(entry) = lock(&waiting).admit(&stream) else {
            let why = format!("{MAX_PENDING_HANDSHAKES} connections that presented this job's hello are finishing their handshake");
            let _ = events.send(Event::Refused { from, why });
            continue;
        };
        let (party, events, registry) = (party.clone(), events.clone(), waiting.clone());
        let (id, heard, dropped) = (entry.id, entry.heard.clone(), entry.dropped.clone());
        let spawned = std::thread::Builder::new().name("paystream-handshake".into()).spawn(move || {
            let outcome = handshake_accepted(stream, &party, (Instant::now() + HANDSHAKE_TIMEOUT).min(deadline), &|| {
                heard.store(true, Ordering::Release)
            });
            lock(&registry).remove(id);
            let _ = events.send(match outcome {
                Ok((peer, stream)) => Event::Connected { peer, stream },
                Err(_) if dropped.load(Ordering::Acquire) => Event::Refused {
                    from,
                    why: format!("dropped to make room: {MAX_PENDING_HANDSHAKES} connections were waiting for a handshake"),
                },
                Err(f) => Event::Refused { from, why: f.to_string() },
            });
        });
        if let Err(e) = spawned {
            lock(&waiting).remove(entry.id);
            tracing::warn!(%from, "refused a cluster connection from {from}: no thread for its handshake: {e}");
        }
    }
}

/// The accepting side's handshake on `stream`, all of it before `until`.
fn handshake_accepted(
    stream: TcpStream,
    party: &Party,
    until: Instant,
    heard: &dyn Fn(),
) -> std::result::Result<(usize, TcpStream), Failure> {
    stream.set_nonblocking(false)?;
    let peer = handshake::as_acceptor(&mut Bounded { stream: &stream, until }, party, heard)?;
    Ok((peer, ready_for_timely(stream)?))
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepted connections still in their handshake, oldest first. Full, it makes room by dropping
/// the oldest one that has not presented a hello for this job: a silent or garbage connection
/// gives way to a process that sent its hello at once, so a flood of idle connections cannot
/// keep a peer out.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    entries: Vec<WaitingEntry>,
}

struct WaitingEntry {
    id: u64,
    /// A handle on the connection, to shut it down when it is dropped.
    stream: Option<TcpStream>,
    /// It presented a hello for this job.
    heard: Arc<AtomicBool>,
    /// It was dropped to make room.
    dropped: Arc<AtomicBool>,
}

/// What a handshake thread needs of its entry.
struct Admitted {
    id: u64,
    heard: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
}

impl Waiting {
    /// Registers `stream`, dropping an older connection if full; `None` if none can go.
    fn admit(&mut self, stream: &TcpStream) -> Option<Admitted> {
        if self.entries.len() >= MAX_PENDING_HANDSHAKES {
            let oldest_silent = self.entries.iter().position(|e| !e.heard.load(Ordering::Acquire))?;
            let entry = self.entries.remove(oldest_silent);
            entry.dropped.store(true, Ordering::Release);
            if let Some(s) = &entry.stream {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.next_id += 1;
        let entry = WaitingEntry {
            id: self.next_id,
            stream: stream.try_clone().ok(),
            heard: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicBool::new(false)),
        };
        let admitted = Admitted { id: entry.id, heard: entry.heard.clone(), dropped: entry.dropped.clone() };
        self.entries.push(entry);
        Some(admitted)
    }

    fn remove(&mut self, id: u64) {
        self.entries.retain(|e| e.id != id);
    }
}

/// A socket whose reads and writes all end by `until`: a per-call timeout alone would let a
/// client that sends a byte every few seconds hold a handshake open for minutes.
struct Bounded<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Bounded<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        match self.until.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            left => Ok(left),
        }
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
/// its network threads alive (which, after a lost peer, shuts the sockets down rather than join
/// them).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_ten_a_second_and_counted_beyond() {
        let start = Instant::now();
        let mut limit = LogLimit::default();
        let logged = (0..25).filter(|_| limit.admit(start)).count();
        assert_eq!(logged, LogLimit::LINES);
        assert_eq!(limit.suppressed, 15);
        limit.report(start + Duration::from_millis(500));
        assert_eq!(limit.suppressed, 15, "the window is not over yet");
        assert!(limit.admit(start + LogLimit::WINDOW), "a new window logs again");
        assert_eq!((limit.logged, limit.suppressed), (1, 0));
    }

    #[test]
    fn a_full_waiting_list_drops_its_oldest_silent_connection_never_one_that_said_hello() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let clients: Vec<TcpStream> = (0..MAX_PENDING_HANDSHAKES + 1).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        let accepted: Vec<TcpStream> = clients.iter().map(|_| listener.accept().expect("accept").0).collect();
        let mut waiting = Waiting::default();
        let admitted: Vec<Admitted> = accepted[..MAX_PENDING_HANDSHAKES].iter().map(|s| waiting.admit(s).expect("room")).collect();
        admitted[0].heard.store(true, Ordering::Release);
        let newest = waiting.admit(&accepted[MAX_PENDING_HANDSHAKES]).expect("room made");
        assert!(!admitted[0].dropped.load(Ordering::Acquire), "the oldest said hello: it stays");
        assert!(admitted[1].dropped.load(Ordering::Acquire), "the oldest silent one goes");
        assert_eq!(waiting.entries.len(), MAX_PENDING_HANDSHAKES);
        let mut byte = [0u8; 1];
        assert_eq!((&clients[1]).read(&mut byte).expect("read"), 0, "its connection is shut down");
        for a in &admitted[1..] {
            a.heard.store(true, Ordering::Release);
        }
        newest.heard.store(true, Ordering::Release);
        let extra = TcpStream::connect(addr).expect("connect");
        let extra = {
            drop(extra);
            listener.accept().expect("accept").0
        };
        assert!(waiting.admit(&extra).is_none(), "every slot said hello: the newcomer is refused");
    }
}
