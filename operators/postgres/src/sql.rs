//! The SQL the sink sends, made from names alone: the column type rule of `create=true`,
//! identifier quoting, and the statements of a write (COPY, the upsert's merge, the bookkeeping).
//!
//! **The type rule** (`create=true`): the sink sees only the CSV header, so a column's type
//! follows its name, the way the house style names columns (units in names):
//! - `BIGINT`: names ending in `_ms`, `_id`, `_cents` or `_count`, and `count`;
//! - `NUMERIC`: names ending in `rate` or `_ratio` (an exact decimal keeps the digits the job
//!   wrote, `0.879310`, where a double would print `0.87931`);
//! - `BOOLEAN`: names starting with `is_` (`is_update`);
//! - `TEXT`: everything else,
//!
//! and a column falls back to `TEXT` when a value of the first lines written does not parse as
//! its type (`txn_id` holds `t42`), or when none of them has a value at all (fraud alerts whose
//! first lines are all window-level ones, with an empty `txn_id`: nothing says the column holds
//! numbers, and TEXT takes whatever comes later). A later value that does not fit fails the write with
//! PostgreSQL's error, naming the column: create the table yourself (and leave `create` off)
//! for other types.

/// The bookkeeping table: one row per committed (job, sink, table, worker, epoch).
pub const COMMITS_TABLE: &str = "paystream_commits";

/// The SQL type `create=true` gives column `name`.
pub fn column_type(name: &str) -> &'static str {
    let name = name.to_ascii_lowercase();
    if name == "count" || ["_ms", "_id", "_cents", "_count"].iter().any(|s| name.ends_with(s)) {
        "BIGINT"
    } else if name.ends_with("rate") || name.ends_with("_ratio") {
        "NUMERIC"
    } else if name.starts_with("is_") {
        "BOOLEAN"
    } else {
        "TEXT"
    }
}

/// The types of `columns` at create time: [`column_type`], falling back to `TEXT` where a value
/// of `sample` (CSV lines) does not parse as the type.
pub fn column_types<'a>(columns: &[String], sample: impl IntoIterator<Item = &'a String>) -> Vec<&'static str> {
    let mut types: Vec<&'static str> = columns.iter().map(|c| column_type(c)).collect();
    let mut valued = vec![false; columns.len()];
    for line in sample {
        for ((ty, value), valued) in types.iter_mut().zip(split_csv(line)).zip(valued.iter_mut()) {
            *valued |= !value.is_empty();
            let fits = value.is_empty()
                || match *ty {
                    "BIGINT" => value.parse::<i64>().is_ok(),
                    "NUMERIC" => value.parse::<f64>().is_ok_and(f64::is_finite),
                    "BOOLEAN" => matches!(value.as_str(), "true" | "false"),
                    _ => true,
                };
            if !fits {
                *ty = "TEXT";
            }
        }
    }
    for (ty, valued) in types.iter_mut().zip(valued) {
        if !valued {
            *ty = "TEXT";
        }
    }
    types
}

/// The fields of a CSV line as the engine writes them (RFC 4180 quoting).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// The text columns of `table` (parameter: the quoted table name): those COPY reads an empty
/// field of as an empty string rather than NULL.
pub const TEXT_COLUMNS: &str = "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 \
     AND NOT attisdropped AND atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)";

/// `name` as a quoted SQL identifier; `schema.table` is quoted part by part.
pub fn quote_ident(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// The columns of a CSV header (the engine's headers hold plain names, never quoted ones).
pub fn header_columns(header: &str) -> Vec<String> {
    header.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
}

fn column_list(columns: &[String]) -> String {
    columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

/// `CREATE TABLE IF NOT EXISTS` for `table` with `columns` of `types` ([`column_types`]), with
/// `key` as its primary key when given (upsert mode).
pub fn create_table(table: &str, columns: &[String], types: &[&str], key: &[String]) -> String {
    let mut parts: Vec<String> = columns.iter().zip(types).map(|(c, t)| format!("{} {t}", quote_ident(c))).collect();
    if !key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", column_list(key)));
    }
    format!("CREATE TABLE IF NOT EXISTS {} ({})", quote_ident(table), parts.join(", "))
}

/// The bookkeeping table, made when missing.
pub fn create_commits_table() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} (job TEXT NOT NULL, sink TEXT NOT NULL, target TEXT NOT NULL, \
         worker INTEGER NOT NULL, epoch BIGINT NOT NULL, rows BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
         PRIMARY KEY (job, sink, target, worker, epoch))"
    )
}

/// Records one epoch of one writer; affects no row when it is recorded already (then the
/// transaction writes nothing). Parameters: job, sink, target, worker, epoch, rows.
pub fn record_commit() -> String {
    format!(
        "INSERT INTO {COMMITS_TABLE} (job, sink, target, worker, epoch, rows) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT DO NOTHING"
    )
}

/// `COPY` of CSV lines into `table`'s `columns`. The table's `text` columns get
/// `FORCE_NOT_NULL`: an empty field is an empty string there, as the job meant, and NULL only in
/// typed columns.
pub fn copy_in(table: &str, columns: &[String], text: &[String]) -> String {
    let text: Vec<String> = columns.iter().filter(|c| text.contains(c)).cloned().collect();
    let force = if text.is_empty() { String::new() } else { format!(", FORCE_NOT_NULL ({})", column_list(&text)) };
    format!("COPY {} ({}) FROM STDIN (FORMAT csv{force})", quote_ident(table), column_list(columns))
}

/// The staging table of an upsert on the write-ahead path: the target's columns plus the order
/// lines came in, dropped at the end of the transaction.
pub const STAGE_TABLE: &str = "paystream_stage";

/// Makes the temporary staging table of an upsert into `table` (inside the transaction).
pub fn create_stage(table: &str, columns: &[String]) -> String {
    format!(
        "CREATE TEMP TABLE {STAGE_TABLE} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA; \
         ALTER TABLE {STAGE_TABLE} ADD COLUMN paystream_line BIGSERIAL",
        column_list(columns),
        quote_ident(table)
    )
}

/// The staging table of one writer's upserts on the prepared-transaction path, where a temporary
/// table cannot be used (PostgreSQL refuses to `PREPARE` a transaction that touched one): an
/// unlogged table of its own, named by a hash of (job, sink, table) and the worker, emptied in
/// every transaction and dropped when the job finishes.
pub fn writer_stage(target: u64, worker: i32) -> String {
    format!("{STAGE_TABLE}_{target:016x}_{worker}")
}

/// The `LIKE` pattern of the staging tables of all writers of one target.
pub fn writer_stages(target: u64) -> String {
    format!("{STAGE_TABLE}\\_{target:016x}\\_%")
}

/// Makes a writer's staging table when it is missing (outside any transaction).
pub fn create_writer_stage(stage: &str, table: &str, columns: &[String]) -> String {
    format!(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {stage} AS SELECT {} FROM {} WITH NO DATA; \
         ALTER TABLE {stage} ADD COLUMN IF NOT EXISTS paystream_line BIGSERIAL",
        column_list(columns),
        quote_ident(table),
        stage = quote_ident(stage)
    )
}

/// Merges the lines staged in `stage` into `table`: the last line of each key wins (a window
/// revised twice in one epoch), replacing the row of an earlier epoch.
pub fn merge_stage(table: &str, stage: &str, columns: &[String], key: &[String]) -> String {
    let others: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
    let action = if others.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let sets: Vec<String> = others.iter().map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c))).collect();
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    format!(
        "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {keys}, paystream_line DESC \
         ON CONFLICT ({keys}) {action}",
        table = quote_ident(table),
        stage = quote_ident(stage),
        cols = column_list(columns),
        keys = column_list(key),
    )
}

/// A stable 64-bit hash (FNV-1a) of a sink's identity, for names that must be the same in every
/// process and after an upgrade (Rust's own hasher promises neither).
pub fn target_hash(job: &str, sink: &str, table: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [job, sink, table] {
        for byte in part.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The global id of the prepared transaction of one writer's epoch. PostgreSQL keeps it in
/// `pg_prepared_xacts.gid` (at most 200 bytes); the bookkeeping row names job, sink and table.
pub fn prepared_gid(target: u64, worker: i32, epoch: i64) -> String {
    format!("{}{worker}:{epoch}", prepared_prefix(target))
}

/// The prefix of the prepared-transaction ids of all writers of one target.
pub fn prepared_prefix(target: u64) -> String {
    format!("paystream:{target:016x}:")
}

/// `gid`'s worker and epoch, when it is one of `prefix`'s.
pub fn parse_gid(prefix: &str, gid: &str) -> Option<(i32, i64)> {
    let (worker, epoch) = gid.strip_prefix(prefix)?.split_once(':')?;
    Some((worker.parse().ok()?, epoch.parse().ok()?))
}

/// `text` as an SQL string literal (for `PREPARE TRANSACTION`, which takes no parameters).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_column_names() {
        let header = "window_start_ms,window_end_ms,merchant_id,count,sum_amount_cents,approved_count,approval_rate,country,is_update";
        let types: Vec<&str> = header_columns(header).iter().map(|c| column_type(c)).collect();
        assert_eq!(types, ["BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "BIGINT", "NUMERIC", "TEXT", "BOOLEAN"]);
    }

    #[test]
    fn a_value_that_does_not_parse_makes_the_column_text() {
        let cols = header_columns("ts_ms,txn_id,approval_rate,is_update,note");
        let sample = ["1767225599154,t0,0.5,true,\"a, \"\"b\"\"\"".to_string(), "1767225599155,t1,,false,".to_string()];
        assert_eq!(split_csv(&sample[0]), ["1767225599154", "t0", "0.5", "true", "a, \"b\""]);
        assert_eq!(column_types(&cols, &sample), ["BIGINT", "TEXT", "NUMERIC", "BOOLEAN", "TEXT"]);
        assert_eq!(column_types(&cols, &["1,2,x,maybe,y".to_string()]), ["BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT"]);
    }

    #[test]
    fn a_column_without_a_value_in_the_first_lines_is_text() {
        // Velocity alerts come first and have no txn_id; blocked-card alerts that follow do.
        let cols = header_columns("rule,card_id,txn_id,ts_ms,detail");
        let sample = ["velocity,7,,1767225659999,11 payments".to_string(), "velocity,8,,1767225669999,12 payments".to_string()];
        assert_eq!(column_types(&cols, &sample), ["TEXT", "BIGINT", "TEXT", "BIGINT", "TEXT"]);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("windows"), "\"windows\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("reports.windows"), "\"reports\".\"windows\"");
    }

    #[test]
    fn statements() {
        let cols = header_columns("merchant_id,count,country");
        let key = vec!["merchant_id".to_string()];
        let types = column_types(&cols, &["1,2,DE".to_string()]);
        assert_eq!(
            create_table("w", &cols, &types, &key),
            "CREATE TABLE IF NOT EXISTS \"w\" (\"merchant_id\" BIGINT, \"count\" BIGINT, \"country\" TEXT, PRIMARY KEY (\"merchant_id\"))"
        );
        assert_eq!(
            copy_in("w", &cols, &["country".to_string()]),
            "COPY \"w\" (\"merchant_id\", \"count\", \"country\") FROM STDIN (FORMAT csv, FORCE_NOT_NULL (\"country\"))"
        );
        let merge = merge_stage("w", STAGE_TABLE, &cols, &key);
        assert!(merge.contains("DISTINCT ON (\"merchant_id\")"), "{merge}");
        assert!(merge
            .ends_with("ON CONFLICT (\"merchant_id\") DO UPDATE SET \"count\" = EXCLUDED.\"count\", \"country\" = EXCLUDED.\"country\""));
        assert!(merge_stage("w", STAGE_TABLE, &key, &key).ends_with("DO NOTHING"));
    }

    #[test]
    fn prepared_transaction_ids() {
        let target = target_hash("throughput-windows", "windows", "w");
        assert_eq!(target, target_hash("throughput-windows", "windows", "w"), "stable");
        assert_ne!(target, target_hash("throughput-window", "swindows", "w"), "parts are separated");
        let gid = prepared_gid(target, 3, 17);
        assert!(gid.len() < 200, "{gid}");
        assert_eq!(parse_gid(&prepared_prefix(target), &gid), Some((3, 17)));
        assert_eq!(parse_gid(&prepared_prefix(target + 1), &gid), None);
        assert_eq!(literal("a'b"), "'a''b'");
        assert_eq!(writer_stage(target, 2), format!("paystream_stage_{target:016x}_2"));
    }
}
