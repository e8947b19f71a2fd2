//! `file:PATH`: CSV or JSON-lines files, as a source (a file, or every `.csv`/`.jsonl` file of a
//! directory, one split each in name order) and as a sink (one file, written by worker 0).
//!
//! The format comes from the extension (`.csv`, `.jsonl`, `.ndjson`, `.json`), or from a
//! `?format=csv|jsonl` option.
//!
//! Delivery guarantees of the sink:
//! * Without checkpoints, it writes `PATH.inprogress` and renames it to `PATH` when the job
//!   finishes, so `PATH` only ever holds a finished run's complete output. A run that dies or is
//!   stopped leaves no partial `PATH` (and a stopped one no `.inprogress` file either).
//! * With checkpoints, it is exactly-once: the output of epoch `k` is staged in
//!   `PATH.parts/epoch-K.staged` (fsync) at the pre-commit, and renamed to `epoch-K.csv`
//!   (published) at the commit, once checkpoint `k` is complete. A restore publishes staged
//!   epochs up to the checkpoint and deletes later ones (rolls forward, then back), so the
//!   published parts always equal what a run that never failed produced for those epochs. When
//!   the job finishes, the parts are joined into `PATH` (header first); the directory is removed
//!   once the job's checkpoints are gone. Within the file, lines are ordered by epoch, so their
//!   order (not their content) depends on when checkpoints happened. Each part's length and
//!   CRC-32C go to `epoch-K.sum` (synced before the part); a part damaged after staging (a bit
//!   flip, a truncation) fails the job when the parts are joined instead of reaching `PATH`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use paystream_engine::connector::{
    Decode, PayloadSource, Progress, Recovery, SinkConnector, SinkContext, SinkTarget, SinkWriter, SourceConnector, SplitReader, UriOptions,
};
use paystream_engine::decode::{LineDecoder, DEFAULT_MAX_RECORD_BYTES};
use paystream_engine::faults;
use paystream_engine::source::{Position, ReadStatus};
use paystream_engine::{Format, Result};

/// The format of `path`: the `format` option, else its extension.
fn format_of(what: &str, path: &Path, options: &mut UriOptions) -> Result<Option<Format>> {
    match options.text("format") {
        Some(name) => Ok(Some(Format::from_name(&name).with_context(|| what.to_string())?)),
        None => Ok(Format::of_path(path)),
    }
}

/// The `file:` source connector.
pub struct FileSource;

impl SourceConnector for FileSource {
    fn scheme(&self) -> &'static str {
        "file"
    }
    fn usage(&self) -> &'static str {
        "file:PATH (a .csv or .jsonl file, or a directory of them; ?format=csv|jsonl overrides the extension, \
         ?max_record_bytes=N caps a line, default 1 MiB)"
    }
    fn open(&self, source: &str, uri: &str) -> Result<Arc<dyn PayloadSource>> {
        let what = format!("source {uri}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let path = PathBuf::from(rest.strip_prefix("file:").unwrap_or(&rest));
        let forced = format_of(&what, &path, &mut options)?.filter(|_| options.values().contains_key("format"));
        let max_record_bytes = options.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)?;
        if max_record_bytes == 0 {
            bail!("source {uri}: max_record_bytes must be at least 1");
        }
        options.finish()?;
        let meta = fs::metadata(&path).with_context(|| format!("source {uri}: cannot read {}", path.display()))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("source {uri}: cannot list {}", path.display()))? {
                let p = entry?.path();
                if let (true, Some(f)) = (p.is_file(), forced.or(Format::of_path(&p))) {
                    if forced.is_none() || Format::of_path(&p).is_some() {
                        files.push((p, f));
                    }
                }
            }
            files.sort();
            if files.is_empty() {
                bail!("source {uri}: directory {} holds no .csv or .jsonl files", path.display());
            }
        } else {
            let Some(format) = forced.or(Format::of_path(&path)) else {
                bail!("source {uri}: unknown file type; name it .csv or .jsonl, or add ?format=csv|jsonl");
            };
            files.push((path, format));
        }
        Ok(Arc::new(Files { source: source.to_string(), files, max_record_bytes }))
    }
}

/// Files of a source: one split each.
#[derive(Debug)]
struct Files {
    source: String,
    files: Vec<(PathBuf, Format)>,
    max_record_bytes: usize,
}

impl PayloadSource for Files {
    fn splits(&self) -> Result<u64> {
        Ok(self.files.len() as u64)
    }
    fn open_split(&self, split: u64) -> Result<Box<dyn SplitReader>> {
        let (path, format) = self.files.get(split as usize).ok_or_else(|| anyhow!("source {}: no file {split}", self.source))?;
        let file = File::open(path).map_err(|e| anyhow!("source {}: cannot open {}: {e}", self.source, path.display()))?;
        Ok(Box::new(FileSplit {
            source: self.source.clone(),
            path: path.clone(),
            reader: BufReader::with_capacity(1 << 20, file),
            lines: LineDecoder::new(&self.source, path.display().to_string(), *format).with_max_record_bytes(self.max_record_bytes),
        }))
    }
}

/// A CSV or JSON-lines file, read line by line.
struct FileSplit {
    source: String,
    path: PathBuf,
    reader: BufReader<File>,
    lines: LineDecoder,
}

impl SplitReader for FileSplit {
    fn read(&mut self, max: usize, decode: &mut dyn Decode) -> ReadStatus {
        decode.file_lines(&mut self.lines, &mut self.reader, max)
    }
    fn position(&self) -> Position {
        Position { offset: self.lines.offset(), line: self.lines.line_no() }
    }
    fn seek(&mut self, position: &Position) -> Result<()> {
        use std::io::Seek;
        self.reader
            .seek(std::io::SeekFrom::Start(position.offset))
            .map_err(|e| anyhow!("source {}: cannot resume {} at byte {}: {e}", self.source, self.path.display(), position.offset))?;
        self.lines.resume_at(position.offset, position.line);
        Ok(())
    }
}

/// The `file:` sink connector.
pub struct FileSink;

impl SinkConnector for FileSink {
    fn scheme(&self) -> &'static str {
        "file"
    }
    fn usage(&self) -> &'static str {
        "file:PATH (.csv or .jsonl; ?format=csv|jsonl overrides the extension)"
    }
    fn open(&self, _sink: &str, uri: &str) -> Result<Arc<dyn SinkTarget>> {
        let what = format!("sink {uri}");
        let (rest, mut options) = UriOptions::split_query(&what, uri)?;
        let path = PathBuf::from(rest.strip_prefix("file:").unwrap_or(&rest));
        let format = format_of(&what, &path, &mut options)?;
        options.finish()?;
        if path.is_dir() {
            bail!("sink {uri}: {} is a directory; name a file such as {}/out.csv", path.display(), path.display());
        }
        let Some(format) = format else {
            bail!("sink {uri}: unknown file type; name it .csv or .jsonl, or add ?format=csv|jsonl");
        };
        Ok(Arc::new(FileTarget { path, format }))
    }
}

/// A file a sink writes.
#[derive(Debug)]
struct FileTarget {
    path: PathBuf,
    format: Format,
}

/// The directory where a checkpointed file sink stages and publishes its output per epoch.
pub(crate) fn parts_dir(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".parts");
    PathBuf::from(p)
}

fn staged_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:010}.staged"))
}

fn published_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:010}.csv"))
}

fn in_progress(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".inprogress");
    PathBuf::from(p)
}

/// What a file of a sink's parts directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartKind {
    /// `epoch-K.staged`: pre-committed, not yet published.
    Staged,
    /// `epoch-K.csv`: published.
    Published,
    /// `epoch-K.sum`: the part's length and CRC-32C, written (and synced) before the part.
    Sum,
}

fn sum_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:010}.sum"))
}

/// The epoch and kind of a file in the parts directory (`epoch-0000000007.staged` -> (7, Staged)).
fn part_epoch(name: &str) -> Option<(u64, PartKind)> {
    let rest = name.strip_prefix("epoch-")?;
    let (number, kind) = if let Some(n) = rest.strip_suffix(".staged") {
        (n, PartKind::Staged)
    } else if let Some(n) = rest.strip_suffix(".csv") {
        (n, PartKind::Published)
    } else {
        (rest.strip_suffix(".sum")?, PartKind::Sum)
    };
    number.parse().ok().map(|e| (e, kind))
}

/// The text of a part's sum file.
fn sum_text(bytes: &[u8]) -> String {
    format!("crc32c {:08x} length {}\n", crc32c::crc32c(bytes), bytes.len())
}

/// Creates a staging file afresh: a file left there is removed, a symbolic link planted there is
/// refused (writing through it would overwrite its target).
fn create_staging(path: &Path) -> Result<File> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("refusing to write through the symbolic link at {}; remove it", path.display())
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?,
        Err(_) => {}
    }
    fs::OpenOptions::new().write(true).create_new(true).open(path).with_context(|| format!("cannot create {}", path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    Ok(())
}

impl SinkTarget for FileTarget {
    fn format(&self) -> Format {
        self.format
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn directory(&self) -> Option<PathBuf> {
        Some(self.path.parent().map(Path::to_path_buf).unwrap_or_default())
    }
    /// A fresh run removes old parts; a restore from checkpoint `k` publishes staged epochs up to
    /// it and deletes later ones. The staged files themselves are the committables: their names
    /// derive from the epoch alone.
    fn recover(&self, recovery: &Recovery) -> Result<()> {
        let dir = parts_dir(&self.path);
        fs::remove_file(in_progress(&self.path)).ok();
        let Some(k) = recovery.restored else {
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
            }
            return Ok(());
        };
        if !dir.exists() {
            return Ok(());
        }
        for entry in fs::read_dir(&dir)? {
            let file = entry?.path();
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            match part_epoch(&name) {
                Some((epoch, PartKind::Staged)) if epoch <= k => fs::rename(&file, published_path(&dir, epoch))?,
                Some((epoch, _)) if epoch > k => fs::remove_file(&file)?,
                _ => {}
            }
        }
        Ok(())
    }
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        if context.checkpointed {
            return Ok(Box::new(StagedWriter {
                path: self.path.clone(),
                dir: parts_dir(&self.path),
                header: context.header.clone(),
                lines: BTreeMap::new(),
            }));
        }
        create_parent(&self.path)?;
        let staging = in_progress(&self.path);
        let file = create_staging(&staging)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        if let Some(h) = &context.header {
            writeln!(out, "{h}").with_context(|| format!("cannot write {}", staging.display()))?;
        }
        Ok(Box::new(DirectWriter { out: Some(out), staging, path: self.path.clone() }))
    }
    fn after_finish(&self) -> Result<()> {
        let dir = parts_dir(&self.path);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Without checkpoints: straight into `PATH.inprogress`, renamed to `PATH` at the end.
struct DirectWriter {
    out: Option<BufWriter<File>>,
    staging: PathBuf,
    path: PathBuf,
}

impl SinkWriter for DirectWriter {
    fn write(&mut self, _epoch: u64, lines: Vec<String>) -> Result<()> {
        let Some(out) = self.out.as_mut() else { bail!("{} is closed", self.staging.display()) };
        for line in lines {
            out.write_all(line.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .with_context(|| format!("cannot write {}", self.staging.display()))?;
        }
        Ok(())
    }
    fn pre_commit(&mut self, _epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        Ok(Progress::Ready(None))
    }
    fn commit(&mut self, _epoch: u64, _committable: &[u8]) -> Result<Progress> {
        Ok(Progress::Ready(()))
    }
    fn finish(&mut self) -> Result<Progress> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| anyhow!("cannot write {}: {}", self.staging.display(), e.error()))?;
            file.sync_all().with_context(|| format!("cannot write {}", self.staging.display()))?;
            fs::rename(&self.staging, &self.path).with_context(|| format!("cannot rename {} into place", self.staging.display()))?;
        }
        Ok(Progress::Ready(()))
    }
    fn abort(&mut self) {
        self.out = None;
        fs::remove_file(&self.staging).ok();
    }
}

/// With checkpoints: staged per epoch, published on commit, joined at the end.
struct StagedWriter {
    path: PathBuf,
    dir: PathBuf,
    header: Option<String>,
    /// Lines of epochs not yet staged.
    lines: BTreeMap<u64, Vec<String>>,
}

impl SinkWriter for StagedWriter {
    fn write(&mut self, epoch: u64, lines: Vec<String>) -> Result<()> {
        self.lines.entry(epoch).or_default().extend(lines);
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<Progress<Option<Vec<u8>>>> {
        let lines = self.lines.remove(&epoch).unwrap_or_default();
        if lines.is_empty() {
            return Ok(Progress::Ready(None));
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let staged = staged_path(&self.dir, epoch);
        let context = || format!("cannot write {}", staged.display());
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        // The sum first: a staged part always has one, so damage after staging is found when
        // the parts are joined.
        let sum = sum_path(&self.dir, epoch);
        let mut s = File::create(&sum).with_context(|| format!("cannot write {}", sum.display()))?;
        s.write_all(sum_text(&bytes).as_bytes()).and_then(|_| s.sync_all()).with_context(|| format!("cannot write {}", sum.display()))?;
        let mut file = File::create(&staged).with_context(context)?;
        file.write_all(&bytes).with_context(context)?;
        faults::point("sink:before-stage");
        file.sync_all().with_context(context)?;
        Ok(Progress::Ready(Some(epoch.to_le_bytes().to_vec())))
    }
    fn commit(&mut self, epoch: u64, _committable: &[u8]) -> Result<Progress> {
        let staged = staged_path(&self.dir, epoch);
        if staged.exists() {
            fs::rename(&staged, published_path(&self.dir, epoch)).with_context(|| format!("cannot publish {}", staged.display()))?;
        }
        Ok(Progress::Ready(()))
    }
    /// Joins every part, in epoch order, into the output file. The parts stay until the job has
    /// finished and its checkpoints are gone ([`SinkTarget::after_finish`]): a crash before then
    /// restores from a checkpoint that needs them.
    fn finish(&mut self) -> Result<Progress> {
        create_parent(&self.path)?;
        let staging = in_progress(&self.path);
        let context = || format!("cannot write {}", staging.display());
        let mut out = BufWriter::with_capacity(1 << 20, create_staging(&staging)?);
        if let Some(h) = &self.header {
            writeln!(out, "{h}").with_context(context)?;
        }
        let mut parts: Vec<(u64, PathBuf)> = Vec::new();
        if self.dir.exists() {
            for entry in fs::read_dir(&self.dir)? {
                let file = entry?.path();
                if let Some((epoch, PartKind::Staged | PartKind::Published)) =
                    file.file_name().and_then(|n| n.to_str()).and_then(part_epoch)
                {
                    parts.push((epoch, file));
                }
            }
        }
        parts.sort();
        for (epoch, file) in &parts {
            let bytes = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            // Parts staged before sums existed have none; every other part is checked.
            if let Ok(want) = fs::read_to_string(sum_path(&self.dir, *epoch)) {
                if want != sum_text(&bytes) {
                    bail!(
                        "output part {} is damaged: it no longer matches the length and checksum it was written with ({}); \
                         {} is not written",
                        file.display(),
                        want.trim(),
                        self.path.display()
                    );
                }
            }
            out.write_all(&bytes).with_context(context)?;
        }
        let file = out.into_inner().map_err(|e| anyhow!("cannot write {}: {}", staging.display(), e.error()))?;
        file.sync_all().with_context(context)?;
        fs::rename(&staging, &self.path).with_context(|| format!("cannot rename {} into place", staging.display()))?;
        Ok(Progress::Ready(()))
    }
    fn abort(&mut self) {
        fs::remove_file(in_progress(&self.path)).ok();
    }
}
