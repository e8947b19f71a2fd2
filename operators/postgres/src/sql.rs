//! The SQL the sink sends, made from names alone: the column type rule of `create=true`,
//! identifier quoting, and the statements of a write (COPY, the upsert's merge, the bookkeeping).
//!
//! **The type rule** (`create=true`): the sink sees only the CSV header, so a column's type
//! follows its name, the way the house style names columns (units in names):
//! - `BIGINT`: names ending in `_ms`, `_id`, `_cents` or `_count`, and `count`;
//! - `NUMERIC`: names ending in `rate` or `_ratio` (an exact decimal keeps the digits the job
//!   wrote, `0.879310`, where a double would print `0.87931`);
//! - `BOOLEAN`: names starting with `is_` (`is_update`);
//! - `TEXT`: everything else.
//!
//! A value that does not fit its column's type fails the write with PostgreSQL's error, naming
//! the column: create the table yourself (and leave `create` off) for other types.

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

/// `CREATE TABLE IF NOT EXISTS` for `table` with `columns` typed by [`column_type`], with
/// `key` as its primary key when given (upsert mode).
pub fn create_table(table: &str, columns: &[String], key: &[String]) -> String {
    let mut parts: Vec<String> = columns.iter().map(|c| format!("{} {}", quote_ident(c), column_type(c))).collect();
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

/// `COPY` of CSV lines into `table`'s `columns`. Text columns get `FORCE_NOT_NULL`: an empty
/// field is an empty string there, as the job meant, and NULL only in typed columns.
pub fn copy_in(table: &str, columns: &[String]) -> String {
    let text: Vec<String> = columns.iter().filter(|c| column_type(c) == "TEXT").cloned().collect();
    let force = if text.is_empty() { String::new() } else { format!(", FORCE_NOT_NULL ({})", column_list(&text)) };
    format!("COPY {} ({}) FROM STDIN (FORMAT csv{force})", quote_ident(table), column_list(columns))
}

/// The staging table of an upsert: the target's columns plus the order lines came in, dropped
/// at the end of the transaction.
pub const STAGE_TABLE: &str = "paystream_stage";

/// Makes the staging table of an upsert into `table` (inside the transaction).
pub fn create_stage(table: &str, columns: &[String]) -> String {
    format!(
        "CREATE TEMP TABLE {STAGE_TABLE} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA; \
         ALTER TABLE {STAGE_TABLE} ADD COLUMN paystream_line BIGSERIAL",
        column_list(columns),
        quote_ident(table)
    )
}

/// Merges the staged lines into `table`: the last line of each key wins (a window revised
/// twice in one epoch), replacing the row of an earlier epoch.
pub fn merge_stage(table: &str, columns: &[String], key: &[String]) -> String {
    let others: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
    let action = if others.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let sets: Vec<String> = others.iter().map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c))).collect();
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    format!(
        "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {STAGE_TABLE} ORDER BY {keys}, paystream_line DESC \
         ON CONFLICT ({keys}) {action}",
        table = quote_ident(table),
        cols = column_list(columns),
        keys = column_list(key),
    )
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
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("windows"), "\"windows\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("reports.windows"), "\"reports\".\"windows\"");
    }

    #[test]
    fn statements() {
        let cols = header_columns("merchant_id,count,country");
        let key = vec!["merchant_id".to_string()];
        assert_eq!(
            create_table("w", &cols, &key),
            "CREATE TABLE IF NOT EXISTS \"w\" (\"merchant_id\" BIGINT, \"count\" BIGINT, \"country\" TEXT, PRIMARY KEY (\"merchant_id\"))"
        );
        assert_eq!(
            copy_in("w", &cols),
            "COPY \"w\" (\"merchant_id\", \"count\", \"country\") FROM STDIN (FORMAT csv, FORCE_NOT_NULL (\"country\"))"
        );
        let merge = merge_stage("w", &cols, &key);
        assert!(merge.contains("DISTINCT ON (\"merchant_id\")"), "{merge}");
        assert!(merge
            .ends_with("ON CONFLICT (\"merchant_id\") DO UPDATE SET \"count\" = EXCLUDED.\"count\", \"country\" = EXCLUDED.\"country\""));
        assert!(merge_stage("w", &key, &key).ends_with("DO NOTHING"));
    }
}
