//! The handshake on every connection between two processes of a job, before timely gets it.
//!
//! Three fixed-size messages, then timely's own bytes:
//!
//! 1. the connecting process (the higher index, as in timely) sends a [`Hello`] (84 bytes):
//!    magic `PAYSTRMC`, protocol version, flags (bit 0: a secret is in use), the job's identity
//!    (SHA-256 of the job's name, process count and workers per process), its own index, the
//!    index it means to reach, and a 32-byte random nonce;
//! 2. the accepting process checks it and answers with its own [`Hello`] and a tag: HMAC-SHA256
//!    over both hellos under the label `acceptor`;
//! 3. the connecting process checks that hello and tag, and sends its tag (label `connector`).
//!
//! The tags' key is the job's secret (`--secret-file`, or the coordinator's), so only a holder
//! of the secret completes a handshake, and a recorded one cannot be replayed (each side's nonce
//! is fresh). Without a secret the key is the job's identity: that proves nothing about who is
//! at the other end, but a client that is not a paystream process of this job (a port scanner,
//! garbage, another job, another version) still fails and is dropped.
//!
//! Every read is exact (no read-ahead), so when the handshake ends the socket stands exactly at
//! the first byte timely sends, as `initialize_networking_from_sockets` expects (timely's own
//! formation sends the connecting process's index as a u64 first; handed-over sockets skip it).
//! The data that follows is not encrypted or authenticated: keep the processes on a private
//! network (README, "Several processes").

use std::io::{Read, Write};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// First bytes of every handshake.
pub const MAGIC: [u8; 8] = *b"PAYSTRMC";
/// Version of this handshake; processes of different versions refuse each other.
pub const VERSION: u16 = 1;
/// Length of a [`Hello`].
pub const HELLO_LEN: usize = 84;
/// Length of a tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
const FLAG_SECRET: u16 = 1;

/// A job's shared secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A secret of these bytes (at least [`Secret::MIN_LEN`]).
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<Secret> {
        if bytes.len() < Self::MIN_LEN {
            anyhow::bail!("the cluster secret has {} bytes; give at least {}", bytes.len(), Self::MIN_LEN);
        }
        Ok(Secret(bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What both ends of a connection must agree on: the job's identity, their indices and the key.
#[derive(Clone, Debug)]
pub struct Party {
    job: [u8; 32],
    process: u32,
    processes: u32,
    secret: Option<Secret>,
}

impl Party {
    /// Process `process` of `processes` running `job` with `workers` workers each.
    pub fn new(job: &str, processes: usize, workers: usize, process: usize, secret: Option<Secret>) -> Party {
        Party { job: job_identity(job, processes, workers), process: process as u32, processes: processes as u32, secret }
    }

    fn flags(&self) -> u16 {
        if self.secret.is_some() {
            FLAG_SECRET
        } else {
            0
        }
    }

    fn tag(&self, label: &[u8], connector: &[u8; HELLO_LEN], acceptor: &[u8; HELLO_LEN]) -> HmacSha256 {
        let key: &[u8] = match &self.secret {
            Some(s) => &s.0,
            None => &self.job,
        };
        // HMAC takes a key of any length.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"paystream cluster handshake v1 ");
        mac.update(label);
        mac.update(connector);
        mac.update(acceptor);
        mac
    }

    /// Checks what a peer's hello says about the job and the secret.
    fn check_job(&self, theirs: &Hello) -> Result<(), String> {
        if theirs.job != self.job {
            return Err("it belongs to another job (or to this job with other --processes or --workers)".into());
        }
        match (theirs.flags & FLAG_SECRET != 0, self.secret.is_some()) {
            (true, false) => Err("it uses a cluster secret and this process has none (give every process the same --secret-file)".into()),
            (false, true) => Err("it has no cluster secret and this process has one (give every process the same --secret-file)".into()),
            _ => Ok(()),
        }
    }
}

/// SHA-256 of the job's name, process count and workers per process: processes that disagree
/// on any of them cannot run the job together.
pub fn job_identity(job: &str, processes: usize, workers: usize) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"paystream job\0");
    hash.update((job.len() as u64).to_be_bytes());
    hash.update(job.as_bytes());
    hash.update((processes as u64).to_be_bytes());
    hash.update((workers as u64).to_be_bytes());
    hash.finalize().into()
}

/// The first message of each side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Bit 0: a secret is in use.
    pub flags: u16,
    /// [`job_identity`].
    pub job: [u8; 32],
    /// The sender's process index.
    pub from: u32,
    /// The process index the sender means to reach.
    pub to: u32,
    /// Fresh random bytes.
    pub nonce: [u8; 32],
}

impl Hello {
    /// The wire form.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_be_bytes());
        out[10..12].copy_from_slice(&self.flags.to_be_bytes());
        out[12..44].copy_from_slice(&self.job);
        out[44..48].copy_from_slice(&self.from.to_be_bytes());
        out[48..52].copy_from_slice(&self.to.to_be_bytes());
        out[52..84].copy_from_slice(&self.nonce);
        out
    }

    /// Reads the wire form, refusing another protocol or version.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if bytes[0..8] != MAGIC {
            return Err("it is not a paystream cluster handshake (wrong magic)".into());
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(format!("it speaks cluster protocol version {version}, this process {VERSION}"));
        }
        let array = |range: std::ops::Range<usize>| -> [u8; 32] { bytes[range].try_into().unwrap_or([0; 32]) };
        let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Ok(Hello {
            flags: u16::from_be_bytes([bytes[10], bytes[11]]),
            job: array(12..44),
            from: word(44),
            to: word(48),
            nonce: array(52..84),
        })
    }
}

fn nonce() -> std::io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(format!("no random bytes for a nonce: {e}")))?;
    Ok(bytes)
}

/// How a handshake failed.
#[derive(Debug)]
pub enum Failure {
    /// The other end broke off or stalled: closed, reset, timed out.
    Io(std::io::Error),
    /// The other end said something that does not fit: the reason.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => f.write_str("it closed the connection during the handshake"),
            Failure::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                f.write_str("it sent no complete handshake in time")
            }
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Refused(why) => f.write_str(why),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// The connecting side, reaching process `peer`. On success the stream is ready for timely.
pub fn as_connector<S: Read + Write>(stream: &mut S, me: &Party, peer: usize) -> Result<(), Failure> {
    let mine = Hello { flags: me.flags(), job: me.job, from: me.process, to: peer as u32, nonce: nonce()? }.encode();
    stream.write_all(&mine)?;
    stream.flush()?;
    let mut reply = [0u8; HELLO_LEN + TAG_LEN];
    stream.read_exact(&mut reply)?;
    let (theirs_bytes, tag) = reply.split_at(HELLO_LEN);
    let theirs_bytes: [u8; HELLO_LEN] = theirs_bytes.try_into().map_err(|_| Failure::Refused("short hello".into()))?;
    let theirs = Hello::decode(&theirs_bytes).map_err(Failure::Refused)?;
    me.check_job(&theirs).map_err(Failure::Refused)?;
    if theirs.from as usize != peer || theirs.to != me.process {
        return Err(Failure::Refused(format!(
            "it answers as process {} expecting process {} (check the hosts file)",
            theirs.from, theirs.to
        )));
    }
    me.tag(b"acceptor", &mine, &theirs_bytes).verify_slice(tag).map_err(|_| Failure::Refused(wrong_tag()))?;
    stream.write_all(&me.tag(b"connector", &mine, &theirs_bytes).finalize().into_bytes())?;
    stream.flush()?;
    Ok(())
}

/// The accepting side: returns the index of the process that connected. `heard` is called once
/// the other side presented a hello for this job and this process. On success the stream is
/// ready for timely.
pub fn as_acceptor<S: Read + Write>(stream: &mut S, me: &Party, heard: &dyn Fn()) -> Result<usize, Failure> {
    let mut theirs_bytes = [0u8; HELLO_LEN];
    stream.read_exact(&mut theirs_bytes)?;
    let theirs = Hello::decode(&theirs_bytes).map_err(Failure::Refused)?;
    me.check_job(&theirs).map_err(Failure::Refused)?;
    let from = theirs.from as usize;
    if theirs.to != me.process || from <= me.process as usize || from >= me.processes as usize {
        return Err(Failure::Refused(format!(
            "it claims to be process {} reaching process {}; process {} accepts processes {}..{} only",
            theirs.from,
            theirs.to,
            me.process,
            me.process + 1,
            me.processes
        )));
    }
    heard();
    let mine = Hello { flags: me.flags(), job: me.job, from: me.process, to: theirs.from, nonce: nonce()? }.encode();
    let mut reply = [0u8; HELLO_LEN + TAG_LEN];
    reply[..HELLO_LEN].copy_from_slice(&mine);
    reply[HELLO_LEN..].copy_from_slice(&me.tag(b"acceptor", &theirs_bytes, &mine).finalize().into_bytes());
    stream.write_all(&reply)?;
    stream.flush()?;
    let mut tag = [0u8; TAG_LEN];
    stream.read_exact(&mut tag)?;
    me.tag(b"connector", &theirs_bytes, &mine).verify_slice(&tag).map_err(|_| Failure::Refused(wrong_tag()))?;
    Ok(from)
}

fn wrong_tag() -> String {
    "its handshake tag does not verify (a wrong cluster secret, or not a process of this job)".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(connector: Party, acceptor: Party) -> (Result<(), Failure>, Result<usize, Failure>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepting = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
            let r = as_acceptor(&mut s, &acceptor, &|| {});
            // What follows the handshake is the data, untouched.
            let mut rest = Vec::new();
            if r.is_ok() {
                s.read_to_end(&mut rest).expect("read the rest");
                assert_eq!(rest, b"timely bytes");
            }
            r
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let c = as_connector(&mut s, &connector, 0);
        if c.is_ok() {
            s.write_all(b"timely bytes").expect("write");
        }
        drop(s);
        (c, accepting.join().expect("acceptor thread"))
    }

    fn secret(text: &str) -> Option<Secret> {
        Some(Secret::new(text.as_bytes().to_vec()).expect("secret"))
    }

    #[test]
    fn peers_of_one_job_agree_and_leave_the_stream_at_timely_s_first_byte() {
        let (c, a) = pair(Party::new("j", 2, 1, 1, None), Party::new("j", 2, 1, 0, None));
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(a.expect("acceptor"), 1);
        let (c, a) = pair(Party::new("j", 2, 1, 1, secret("0123456789abcdef")), Party::new("j", 2, 1, 0, secret("0123456789abcdef")));
        assert!(c.is_ok() && a.is_ok(), "{c:?} {a:?}");
    }

    #[test]
    fn another_job_a_wrong_secret_or_a_missing_one_is_refused() {
        let (c, _) = pair(Party::new("j", 2, 1, 1, None), Party::new("k", 2, 1, 0, None));
        assert!(c.is_err());
        let (_, a) = pair(Party::new("j", 2, 2, 1, None), Party::new("j", 2, 1, 0, None));
        assert!(a.expect_err("other workers").to_string().contains("another job"));
        let (c, a) = pair(Party::new("j", 2, 1, 1, secret("0123456789abcdef")), Party::new("j", 2, 1, 0, secret("0123456789abcdeX")));
        assert!(c.expect_err("wrong secret").to_string().contains("does not verify"));
        assert!(a.is_err());
        let (_, a) = pair(Party::new("j", 2, 1, 1, None), Party::new("j", 2, 1, 0, secret("0123456789abcdef")));
        assert!(a.expect_err("no secret").to_string().contains("no cluster secret"));
    }

    #[test]
    fn garbage_is_not_a_hello() {
        assert!(Hello::decode(&[0x41; HELLO_LEN]).expect_err("garbage").contains("magic"));
        let mut bytes = Hello { flags: 0, job: [1; 32], from: 1, to: 0, nonce: [2; 32] }.encode();
        assert_eq!(Hello::decode(&bytes).expect("decode").from, 1);
        bytes[9] = 99;
        assert!(Hello::decode(&bytes).expect_err("version").contains("version"));
    }
}
