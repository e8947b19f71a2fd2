//! Job records on disk: one JSON file per job in `STATE_DIR/jobs/`, replaced atomically (written
//! beside it, synced, renamed), so a coordinator killed at any moment finds each record whole.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::job::JobRecord;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (making it, readable by its owner only) `STATE_DIR/jobs`.
    pub fn open(state_dir: &Path) -> Result<Store> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("jobs");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Store { dir })
    }

    pub fn save(&self, record: &JobRecord) -> Result<()> {
        let path = self.dir.join(format!("{}.json", record.id));
        let temporary = self.dir.join(format!(".{}.json.tmp", record.id));
        let text = serde_json::to_vec_pretty(record)?;
        let mut file = File::create(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
        file.write_all(&text).and_then(|_| file.sync_all()).with_context(|| format!("cannot write {}", temporary.display()))?;
        fs::rename(&temporary, &path).with_context(|| format!("cannot rename {} to {}", temporary.display(), path.display()))?;
        if let Ok(dir) = File::open(&self.dir) {
            dir.sync_all().ok();
        }
        Ok(())
    }

    /// Every record saved, oldest id first.
    pub fn load_all(&self) -> Result<Vec<JobRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))? {
            let path = entry?.path();
            let is_record =
                path.extension().is_some_and(|e| e == "json") && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            let text = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let record: JobRecord = serde_json::from_slice(&text).with_context(|| format!("{} is not a job record", path.display()))?;
            records.push(record);
        }
        records.sort_by_key(|r| job_number(&r.id));
        Ok(records)
    }
}

/// The number in `job-N` (ids are numbered in submit order).
pub fn job_number(id: &str) -> u64 {
    id.strip_prefix("job-").and_then(|n| n.parse().ok()).unwrap_or(0)
}
