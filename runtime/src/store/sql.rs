//! The seam between the store's algorithms and the two databases.
//!
//! A statement is one SQL text with `$N` placeholders where SQLite and
//! PostgreSQL agree ([`Sql::both`]), or one text each where they do not
//! ([`Sql::each`]: row locks, `SKIP LOCKED`, batch binding). Its parameters
//! are bound once, whatever the database ([`Query::bind`]); a batch of rows is
//! bound once too ([`Batch`]: one array per column for `unnest` on
//! PostgreSQL, one JSON array of rows for `jsonb_each` on SQLite). Rows come
//! back as tuples or `FromRow` structs that decode from either database.
//!
//! Every statement of the store runs through [`Db`], which counts statements
//! and round trips ([`Counters`], read by `lockstep bench throughput`).
//!
//! **Invariant 6:** SQL is never formatted: texts are `&'static str` constants
//! and every value is a bound parameter.

use super::StoreError;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Encode, FromRow, PgConnection, Postgres, Sqlite, SqliteConnection, Type};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which database a statement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One statement's SQL text for each database; `None` where the database
/// needs no such statement (it is then not sent at all).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    sqlite: Option<&'static str>,
    postgres: Option<&'static str>,
}

impl Sql {
    /// A text both databases accept as written.
    pub(crate) const fn both(text: &'static str) -> Sql {
        Sql {
            sqlite: Some(text),
            postgres: Some(text),
        }
    }

    /// A text for each database, where they really differ.
    pub(crate) const fn each(sqlite: &'static str, postgres: &'static str) -> Sql {
        Sql {
            sqlite: Some(sqlite),
            postgres: Some(postgres),
        }
    }

    /// A statement only SQLite needs (PostgreSQL does the same work inside
    /// another statement).
    pub(crate) const fn sqlite_only(text: &'static str) -> Sql {
        Sql {
            sqlite: Some(text),
            postgres: None,
        }
    }

    /// A statement only PostgreSQL needs (e.g. `pg_notify`).
    pub(crate) const fn postgres_only(text: &'static str) -> Sql {
        Sql {
            sqlite: None,
            postgres: Some(text),
        }
    }

    /// Its PostgreSQL text, if PostgreSQL runs it.
    pub(crate) fn postgres_text(&self) -> Option<&'static str> {
        self.postgres
    }

    fn text(&self, dialect: Dialect) -> Option<&'static str> {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

/// How many statements the store ran and how many exchanges with the
/// database they took (a statement, a `BEGIN`, a `COMMIT` or `ROLLBACK` is
/// one round trip each; on SQLite a round trip is a command to the
/// connection's worker thread).
#[derive(Debug, Default)]
pub struct Counters {
    statements: AtomicU64,
    round_trips: AtomicU64,
    transactions: AtomicU64,
    retried_transactions: AtomicU64,
}

/// How many statements, round trips and transactions a store has run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounters {
    pub statements: u64,
    pub round_trips: u64,
    pub transactions: u64,
    /// Write transactions rolled back and run again (PostgreSQL deadlocks
    /// and serialization failures; the backend decides which failures).
    pub retried_transactions: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> StoreCounters {
        StoreCounters {
            statements: self.statements.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            retried_transactions: self.retried_transactions.load(Ordering::Relaxed),
        }
    }

    fn statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed write transaction is run again.
    pub(crate) fn retried_transaction(&self) {
        self.retried_transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction was begun and ended: two round trips.
    pub(crate) fn transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.round_trips.fetch_add(2, Ordering::Relaxed);
    }
}

/// A connection (or open transaction) of either database, with the counters
/// its statements are counted in.
pub(crate) struct Db<'c> {
    conn: Handle<'c>,
    counters: &'c Counters,
}

enum Handle<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Parameters as the statement's database takes them.
enum Args {
    Sqlite(SqliteArguments),
    Postgres(PgArguments),
}

/// A statement with its bound parameters, ready to run on the [`Db`] it was
/// made for.
pub(crate) struct Query {
    /// `None`: nothing to run on this database.
    sql: Option<&'static str>,
    args: Args,
    /// The first value that failed to encode (reported when the query runs).
    error: Option<BoxDynError>,
}

/// A value both databases can bind.
pub(crate) trait Value<'t>:
    Encode<'t, Sqlite> + Type<Sqlite> + Encode<'t, Postgres> + Type<Postgres>
{
}

impl<'t, T> Value<'t> for T where
    T: Encode<'t, Sqlite> + Type<Sqlite> + Encode<'t, Postgres> + Type<Postgres>
{
}

/// A row type both databases can decode into (tuples, `FromRow` structs).
pub(crate) trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl Query {
    /// Bind the next `$N`.
    pub(crate) fn bind<'t>(mut self, value: impl Value<'t>) -> Query {
        let added = match &mut self.args {
            Args::Sqlite(args) => args.add(value),
            Args::Postgres(args) => args.add(value),
        };
        if let Err(error) = added
            && self.error.is_none()
        {
            self.error = Some(error);
        }
        self
    }

    /// Bind a batch: on PostgreSQL one array per column (the next as many
    /// `$N` as the batch has columns, for `unnest`), on SQLite one JSON array
    /// of rows (the next `$N`, for `jsonb_each`, each row an array read with
    /// `value ->> column`: `jsonb_each` hands each row over in SQLite's
    /// binary JSON, parsed once with the array, where `json_each` would hand
    /// it over as text that every `->>` parses again).
    pub(crate) fn bind_batch(mut self, batch: &Batch<'_>) -> Query {
        match &self.args {
            Args::Sqlite(_) => {
                let json = batch.json();
                self.bind(json)
            }
            Args::Postgres(_) => {
                for column in &batch.columns {
                    self = match column {
                        Column::Int8(v) => self.bind_array(v.as_slice()),
                        Column::Int4(v) => self.bind_array(v.as_slice()),
                        Column::Text(v) => self.bind_array(v.as_slice()),
                        Column::OptInt8(v) => self.bind_array(v.as_slice()),
                        Column::OptInt4(v) => self.bind_array(v.as_slice()),
                        Column::OptText(v) => self.bind_array(v.as_slice()),
                    };
                }
                self
            }
        }
    }

    /// Bind a list of ids: a PostgreSQL `int8[]` (for `= ANY($N)`), or a
    /// JSON array on SQLite (for `IN (SELECT value FROM json_each($N))`).
    pub(crate) fn bind_ids(self, ids: &[i64]) -> Query {
        match &self.args {
            Args::Sqlite(_) => {
                let mut json = String::with_capacity(ids.len() * 8 + 2);
                json.push('[');
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        json.push(',');
                    }
                    json.push_str(&id.to_string());
                }
                json.push(']');
                self.bind(json)
            }
            Args::Postgres(_) => self.bind_array(ids),
        }
    }

    /// Bind an optional list of names: a PostgreSQL `text[]` or a JSON array
    /// on SQLite; `None` is SQL NULL on both.
    pub(crate) fn bind_names(self, names: Option<&[String]>) -> Query {
        match (&self.args, names) {
            (Args::Sqlite(_), None) => self.bind(None::<&str>),
            (Args::Postgres(_), None) => self.bind_array(None::<&[String]>),
            (Args::Sqlite(_), Some(names)) => {
                let mut json = String::with_capacity(names.len() * 16 + 2);
                json.push('[');
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        json.push(',');
                    }
                    push_json_string(&mut json, name);
                }
                json.push(']');
                self.bind(json)
            }
            (Args::Postgres(_), Some(names)) => self.bind_array(names),
        }
    }

    /// Bind a PostgreSQL array (only batches do, on PostgreSQL only).
    fn bind_array<'t>(mut self, value: impl Encode<'t, Postgres> + Type<Postgres>) -> Query {
        if let Args::Postgres(args) = &mut self.args
            && let Err(error) = args.add(value)
            && self.error.is_none()
        {
            self.error = Some(error);
        }
        self
    }
}

/// Rows bound as one parameter set, column by column (see
/// [`Query::bind_batch`]). Every column must have the same length.
#[derive(Debug, Default)]
pub(crate) struct Batch<'a> {
    columns: Vec<Column<'a>>,
}

#[derive(Debug)]
enum Column<'a> {
    Int8(Vec<i64>),
    Int4(Vec<i32>),
    Text(Vec<&'a str>),
    OptInt8(Vec<Option<i64>>),
    OptInt4(Vec<Option<i32>>),
    OptText(Vec<Option<&'a str>>),
}

impl Column<'_> {
    fn len(&self) -> usize {
        match self {
            Column::Int8(v) => v.len(),
            Column::Int4(v) => v.len(),
            Column::Text(v) => v.len(),
            Column::OptInt8(v) => v.len(),
            Column::OptInt4(v) => v.len(),
            Column::OptText(v) => v.len(),
        }
    }

    fn write_json(&self, row: usize, out: &mut String) {
        use std::fmt::Write as _;
        let text = push_json_string;
        match self {
            Column::Int8(v) => {
                let _ = write!(out, "{}", v[row]);
            }
            Column::Int4(v) => {
                let _ = write!(out, "{}", v[row]);
            }
            Column::Text(v) => text(out, v[row]),
            Column::OptInt8(v) => match v[row] {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push_str("null"),
            },
            Column::OptInt4(v) => match v[row] {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push_str("null"),
            },
            Column::OptText(v) => match v[row] {
                Some(s) => text(out, s),
                None => out.push_str("null"),
            },
        }
    }
}

/// Append `s` as a JSON string literal. Written here rather than by serde so
/// that encoding has no failure path, hence no fallback value that would
/// bind something other than what the caller passed.
fn push_json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'a> Batch<'a> {
    pub(crate) fn new() -> Batch<'a> {
        Batch {
            columns: Vec::new(),
        }
    }

    pub(crate) fn int8(mut self, column: Vec<i64>) -> Self {
        self.columns.push(Column::Int8(column));
        self
    }

    pub(crate) fn int4(mut self, column: Vec<i32>) -> Self {
        self.columns.push(Column::Int4(column));
        self
    }

    pub(crate) fn text(mut self, column: Vec<&'a str>) -> Self {
        self.columns.push(Column::Text(column));
        self
    }

    pub(crate) fn opt_int8(mut self, column: Vec<Option<i64>>) -> Self {
        self.columns.push(Column::OptInt8(column));
        self
    }

    pub(crate) fn opt_int4(mut self, column: Vec<Option<i32>>) -> Self {
        self.columns.push(Column::OptInt4(column));
        self
    }

    pub(crate) fn opt_text(mut self, column: Vec<Option<&'a str>>) -> Self {
        self.columns.push(Column::OptText(column));
        self
    }

    /// Rows in the batch (the length of its first column).
    pub(crate) fn len(&self) -> usize {
        self.columns.first().map_or(0, Column::len)
    }

    /// `[[c0, c1, …], …]`, one array per row.
    fn json(&self) -> String {
        let rows = self.len();
        debug_assert!(self.columns.iter().all(|c| c.len() == rows));
        let mut out = String::with_capacity(rows * 16 * self.columns.len().max(1) + 2);
        out.push('[');
        for row in 0..rows {
            if row > 0 {
                out.push(',');
            }
            out.push('[');
            for (i, column) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                column.write_json(row, &mut out);
            }
            out.push(']');
        }
        out.push(']');
        out
    }
}

impl<'c> Db<'c> {
    pub(crate) fn sqlite(conn: &'c mut SqliteConnection, counters: &'c Counters) -> Db<'c> {
        Db {
            conn: Handle::Sqlite(conn),
            counters,
        }
    }

    pub(crate) fn postgres(conn: &'c mut PgConnection, counters: &'c Counters) -> Db<'c> {
        Db {
            conn: Handle::Postgres(conn),
            counters,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.conn {
            Handle::Sqlite(_) => Dialect::Sqlite,
            Handle::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Start a statement for this database.
    pub(crate) fn query(&self, sql: &Sql) -> Query {
        let dialect = self.dialect();
        Query {
            sql: sql.text(dialect),
            args: match dialect {
                Dialect::Sqlite => Args::Sqlite(SqliteArguments::default()),
                Dialect::Postgres => Args::Postgres(PgArguments::default()),
            },
            error: None,
        }
    }

    /// Run a statement; the number of rows it changed.
    pub(crate) async fn execute(&mut self, query: Query) -> Result<u64, StoreError> {
        let Query { sql, args, error } = query;
        let Some(sql) = sql else {
            return Ok(0);
        };
        self.counters.statement();
        if let Some(error) = error {
            return Err(StoreError::Database(sqlx::Error::Encode(error)));
        }
        let changed = match (&mut self.conn, args) {
            (Handle::Sqlite(conn), Args::Sqlite(args)) => sqlx::query_with(sql, args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
            (Handle::Postgres(conn), Args::Postgres(args)) => sqlx::query_with(sql, args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
            _ => return Err(mixed()),
        };
        Ok(changed)
    }

    /// Run a statement and decode every row it returns.
    pub(crate) async fn fetch_all<R: Record>(
        &mut self,
        query: Query,
    ) -> Result<Vec<R>, StoreError> {
        let Query { sql, args, error } = query;
        let Some(sql) = sql else {
            return Ok(Vec::new());
        };
        self.counters.statement();
        if let Some(error) = error {
            return Err(StoreError::Database(sqlx::Error::Encode(error)));
        }
        let rows = match (&mut self.conn, args) {
            (Handle::Sqlite(conn), Args::Sqlite(args)) => {
                sqlx::query_as_with::<Sqlite, R, _>(sql, args)
                    .fetch_all(&mut **conn)
                    .await?
            }
            (Handle::Postgres(conn), Args::Postgres(args)) => {
                sqlx::query_as_with::<Postgres, R, _>(sql, args)
                    .fetch_all(&mut **conn)
                    .await?
            }
            _ => return Err(mixed()),
        };
        Ok(rows)
    }

    /// Run a statement that returns at most one row.
    pub(crate) async fn fetch_optional<R: Record>(
        &mut self,
        query: Query,
    ) -> Result<Option<R>, StoreError> {
        let Query { sql, args, error } = query;
        let Some(sql) = sql else {
            return Ok(None);
        };
        self.counters.statement();
        if let Some(error) = error {
            return Err(StoreError::Database(sqlx::Error::Encode(error)));
        }
        let row = match (&mut self.conn, args) {
            (Handle::Sqlite(conn), Args::Sqlite(args)) => {
                sqlx::query_as_with::<Sqlite, R, _>(sql, args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
            (Handle::Postgres(conn), Args::Postgres(args)) => {
                sqlx::query_as_with::<Postgres, R, _>(sql, args)
                    .fetch_optional(&mut **conn)
                    .await?
            }
            _ => return Err(mixed()),
        };
        Ok(row)
    }

    /// Run a statement that returns exactly one row.
    pub(crate) async fn fetch_one<R: Record>(&mut self, query: Query) -> Result<R, StoreError> {
        self.fetch_optional(query)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
}

/// A query built for one database run on the other: a bug in the store.
fn mixed() -> StoreError {
    StoreError::Corrupt("a statement was built for the other database".to_string())
}

/// An open transaction of either database. Dropped without
/// [`Tx::commit`], it rolls back. (Public only so backends can name it; the
/// module is private, so nothing outside the store can.)
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Its statements run here.
    pub(crate) fn db<'a>(&'a mut self, counters: &'a Counters) -> Db<'a> {
        match self {
            Tx::Sqlite(tx) => Db::sqlite(tx, counters),
            Tx::Postgres(tx) => Db::postgres(tx, counters),
        }
    }

    pub(crate) async fn commit(self, counters: &Counters) -> Result<(), StoreError> {
        counters.transaction();
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub(crate) async fn rollback(self, counters: &Counters) -> Result<(), StoreError> {
        counters.transaction();
        match self {
            Tx::Sqlite(tx) => tx.rollback().await?,
            Tx::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// A pooled connection of either database, outside any transaction (each
/// statement commits by itself).
pub enum Conn {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
}

impl Conn {
    pub(crate) fn db<'a>(&'a mut self, counters: &'a Counters) -> Db<'a> {
        match self {
            Conn::Sqlite(conn) => Db::sqlite(conn, counters),
            Conn::Postgres(conn) => Db::postgres(conn, counters),
        }
    }
}

/// An `EXPLAIN`'s rows as one text, a line per plan node.
pub(crate) fn plan_text(rows: Vec<(String,)>) -> String {
    rows.into_iter()
        .map(|(line,)| line)
        .collect::<Vec<_>>()
        .join("\n")
}
