//! The list queries of the delivery log, built once for both backends: the same filters, the
//! same newest-first order, the same cursor. Only how a parameter is written differs (`?1` in
//! SQLite, `$1` in PostgreSQL); each backend binds the [`Arg`]s its own way.

use crate::domain::{self, prefix};
use crate::model::{DeliveryFilter, EventFilter};

/// A value bound to a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

impl From<String> for Arg {
    fn from(text: String) -> Self {
        Arg::Text(text)
    }
}

/// How a backend writes its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A select with the filters that have a value, newest first.
#[derive(Debug)]
pub struct Query {
    pub sql: String,
    pub args: Vec<Arg>,
    dialect: Dialect,
}

impl Query {
    fn new(dialect: Dialect, select: String) -> Self {
        Self {
            sql: select + " where 1 = 1",
            args: Vec::new(),
            dialect,
        }
    }

    /// Adds `and {column} {op} <parameter>` when there is a value.
    fn and(mut self, column: &str, op: &str, value: Option<impl Into<Arg>>) -> Self {
        if let Some(v) = value {
            self.args.push(v.into());
            let n = self.args.len();
            self.sql += &match self.dialect {
                Dialect::Sqlite => format!(" and {column} {op} ?{n}"),
                Dialect::Postgres => format!(" and {column} {op} ${n}"),
            };
        }
        self
    }

    /// Newest first (ids grow with time), at most `limit` rows.
    fn newest_first(self, limit: u32) -> Self {
        let mut q = self;
        q.args.push(Arg::Int(i64::from(limit)));
        let n = q.args.len();
        q.sql += &match q.dialect {
            Dialect::Sqlite => format!(" order by id desc limit ?{n}"),
            Dialect::Postgres => format!(" order by id desc limit ${n}"),
        };
        q
    }
}

/// Events that pass `filter`: `columns` of the `events` table.
pub fn events(dialect: Dialect, columns: &str, filter: EventFilter) -> Query {
    // Event ids begin with their time, so a time range is an id range.
    let floor = |t| domain::id_floor(prefix::EVENT, t);
    Query::new(dialect, format!("select {columns} from events"))
        .and("type", "=", filter.event_type)
        .and("source", "=", filter.source)
        .and("id", ">=", filter.since.map(floor))
        .and("id", "<", filter.until.map(floor))
        .and("id", "<", filter.before)
        .newest_first(filter.limit)
}

/// Deliveries that pass `filter`: `columns` of the `deliveries` table.
pub fn deliveries(dialect: Dialect, columns: &str, filter: DeliveryFilter) -> Query {
    Query::new(dialect, format!("select {columns} from deliveries"))
        .and("endpoint_id", "=", filter.endpoint_id)
        .and("event_id", "=", filter.event_id)
        .and("status", "=", filter.status.map(|s| s.as_str().to_owned()))
        .and("id", "<", filter.before)
        .newest_first(filter.limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeliveryStatus;

    #[test]
    fn only_the_filters_with_a_value_are_written_each_with_its_own_parameter() {
        let filter = DeliveryFilter {
            endpoint_id: Some("ep_a".into()),
            status: Some(DeliveryStatus::Failed),
            limit: 50,
            ..Default::default()
        };
        let q = deliveries(Dialect::Postgres, "id", filter.clone());
        assert_eq!(
            q.sql,
            "select id from deliveries where 1 = 1 and endpoint_id = $1 and status = $2 \
             order by id desc limit $3"
        );
        assert_eq!(
            q.args,
            [
                Arg::Text("ep_a".into()),
                Arg::Text("failed".into()),
                Arg::Int(50)
            ]
        );
        let q = deliveries(Dialect::Sqlite, "id", filter);
        assert_eq!(
            q.sql,
            "select id from deliveries where 1 = 1 and endpoint_id = ?1 and status = ?2 \
             order by id desc limit ?3"
        );
    }

    #[test]
    fn a_time_range_of_events_is_a_range_of_their_ids() {
        let q = events(
            Dialect::Sqlite,
            "id",
            EventFilter {
                since: Some(1_000),
                until: Some(2_000),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            q.sql,
            "select id from events where 1 = 1 and id >= ?1 and id < ?2 \
             order by id desc limit ?3"
        );
        assert_eq!(
            q.args[..2],
            [
                Arg::Text(domain::id_floor(prefix::EVENT, 1_000)),
                Arg::Text(domain::id_floor(prefix::EVENT, 2_000)),
            ]
        );
    }
}
