//! The local control endpoint of a checkpointed run: a Unix socket `control.sock` in the
//! checkpoint directory, through which `paystream savepoint` reaches the running job.
//!
//! Process 0 of a run with `--checkpoint-dir DIR` listens on `DIR/control.sock` (on the run's I/O
//! runtime) while the job runs, and removes it at the end. The protocol is one line each way: the
//! request `savepoint` or `savepoint stop`; the answer `ok PATH` (the savepoint's directory) or
//! `error MESSAGE`. Anyone who may write to the checkpoint directory may control the job, as
//! anyone who may write its checkpoints could already.
//!
//! A client finding no socket says at once that no job is running, unless the socket's path is too
//! long for a Unix socket: then it falls back to the request file the coordinator also watches
//! ([`crate::checkpoint::request_savepoint`]). A client finding a socket nobody listens on (the
//! job ended abruptly) says so at once too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::runtime::Handle;

use crate::Result;

/// The socket's file name in the checkpoint directory.
pub const SOCKET: &str = "control.sock";

/// The listening socket; removed when dropped (the run ended).
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// Listens on `DIR/control.sock` for savepoint requests, each answered after at most `timeout`.
/// `None` (with a warning) where the socket cannot be made: clients then use the request file.
pub fn serve(io: &Handle, dir: &Path, timeout: Duration) -> Option<ControlSocket> {
    let path = dir.join(SOCKET);
    // A socket left by a run that ended abruptly.
    std::fs::remove_file(&path).ok();
    let listener = {
        let _inside = io.enter();
        match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "no control socket: `paystream savepoint` falls back to the request file");
                return None;
            }
        }
    };
    let dir = dir.to_path_buf();
    io.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(read);
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    request @ ("savepoint" | "savepoint stop") => {
                        let stop = request.ends_with("stop");
                        let asked = tokio::task::spawn_blocking(move || crate::checkpoint::request_savepoint(&dir, stop, timeout)).await;
                        match asked {
                            Ok(Ok(path)) => format!("ok {}\n", path.display()),
                            Ok(Err(e)) => format!("error {}\n", format!("{e:#}").replace('\n', " ")),
                            Err(e) => format!("error {e}\n"),
                        }
                    }
                    other => format!("error unknown request {other:?}; send `savepoint` or `savepoint stop`\n"),
                };
                let _ = write.write_all(answer.as_bytes()).await;
            });
        }
    });
    tracing::debug!(socket = %path.display(), "control socket listening");
    Some(ControlSocket { path })
}

/// Asks the job checkpointing into `dir` for a savepoint (and to stop after it, with `stop`),
/// waiting up to `timeout`: through its control socket, or, where there is none, the request file.
pub fn request_savepoint(dir: &Path, stop: bool, timeout: Duration) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{} is not a checkpoint directory; give the --checkpoint-dir of a running job", dir.display());
    }
    let path = dir.join(SOCKET);
    if !path.exists() {
        // A running job listens there unless the path is too long for a Unix socket (108 bytes
        // on Linux, with room to spare): then only the request file reaches it.
        if path.as_os_str().len() < 100 {
            bail!("no job is running with --checkpoint-dir {}: a running job listens on {}", dir.display(), path.display());
        }
        return crate::checkpoint::request_savepoint(dir, stop, timeout);
    }
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound) => bail!(
            "no job is running with --checkpoint-dir {}: nothing listens on {} (a job that ended abruptly leaves it behind)",
            dir.display(),
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot reach the job through {}", path.display())),
    };
    stream.set_read_timeout(Some(timeout + Duration::from_secs(5)))?;
    stream
        .write_all(if stop { b"savepoint stop\n" } else { b"savepoint\n" })
        .with_context(|| format!("cannot write to {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("no answer from the job through {} within {timeout:?}", path.display()))?;
    match answer.trim().split_once(' ') {
        Some(("ok", saved)) => Ok(PathBuf::from(saved)),
        Some(("error", message)) => bail!("{message}"),
        _ if answer.is_empty() => bail!("the job closed {} without an answer (did it end?)", path.display()),
        _ => bail!("unexpected answer from {}: {answer:?}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_nobody_listens_on_is_reported_at_once() {
        let dir = std::env::temp_dir().join(format!("paystream-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SOCKET);
        std::fs::remove_file(&path).ok();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let started = std::time::Instant::now();
        let e = request_savepoint(&dir, false, Duration::from_secs(30)).unwrap_err().to_string();
        assert!(e.contains("no job is running"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn requests_are_answered_through_the_socket() {
        let dir = std::env::temp_dir().join(format!("paystream-control-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let io = crate::io::IoRuntime::new().unwrap();
        let socket = serve(io.handle(), &dir, Duration::from_millis(200)).expect("a socket");
        // No coordinator answers the request file: the job's answer is the timeout, as an error.
        let e = request_savepoint(&dir, true, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("no savepoint appeared"), "{e}");
        drop(socket);
        assert!(!dir.join(SOCKET).exists(), "the socket goes with the run");
        std::fs::remove_dir_all(&dir).ok();
    }
}
