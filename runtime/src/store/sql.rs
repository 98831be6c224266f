//! The seam between the store's algorithms and the two databases.
//!
//! A statement is one SQL text with `$N` placeholders where SQLite and
//! PostgreSQL agree ([`Sql::both`]), or one text each where they do not
//! ([`Sql::each`]: row locks, `SKIP LOCKED`, batch binding). Its parameters
//! are bound once, whatever the database ([`Query::bind`]); a batch of rows is
//! bound once too ([`Batch`]: one array per column for `unnest` on
//! PostgreSQL, one JSON array of rows for `json_each` on SQLite). Rows come
//! back as tuples or `FromRow` structs that decode from either database.
//!
//! Every statement of the store runs through [`Db`], which counts statements
//! and round trips ([`Counters`], read by `lockstep bench throughput`).
//!
//! **Invariant:** SQL is never formatted: texts are `&'static str` constants
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

/// One statement's SQL text for each database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    sqlite: &'static str,
    postgres: &'static str,
}

impl Sql {
    /// A text both databases accept as written.
    pub(crate) const fn both(text: &'static str) -> Sql {
        Sql {
            sqlite: text,
            postgres: text,
        }
    }

    fn text(&self, dialect: Dialect) -> &'static str {
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
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounters {
    pub statements: u64,
    pub round_trips: u64,
    pub transactions: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> StoreCounters {
        StoreCounters {
            statements: self.statements.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }

    fn statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
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
    sql: &'static str,
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
        self.counters.statement();
        let Query { sql, args, error } = query;
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
        self.counters.statement();
        let Query { sql, args, error } = query;
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
        self.counters.statement();
        let Query { sql, args, error } = query;
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
