//! The list queries of the delivery log, built once for both backends: the same filters, the
//! same newest-first order, the same cursor. Only how a parameter is written differs (`?1` in
//! SQLite, `$1` in PostgreSQL); each backend binds the [`Arg`]s its own way.

use crate::domain::{self, Scope, prefix};
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

    /// Keeps the rows to what `scope` sees (see [`within`]).
    fn within(mut self, scope: &Scope, owned: Owned) -> Self {
        if let Some(app) = scope.application_id() {
            self.args.push(Arg::Text(app.to_owned()));
            self.sql += &format!(" and {}", within(self.dialect, owned, self.args.len()));
        }
        self
    }

    /// Newest first (ids grow with time), at most `limit` rows.
    fn newest_first(self, limit: u32) -> Self {
        let mut q = self;
        q.args.push(Arg::Int(i64::from(limit)));
        let n = q.args.len();
        q.sql += &match q.dialect {
            // `+?n`: a bare `?n` would be compiled again at every run (see the SQLite store).
            Dialect::Sqlite => format!(" order by id desc limit +?{n}"),
            Dialect::Postgres => format!(" order by id desc limit ${n}"),
        };
        q
    }
}

/// How a row belongs to an application.
#[derive(Debug, Clone, Copy)]
pub enum Owned {
    /// The column names the owning application.
    Directly(&'static str),
    /// The column names an endpoint, which the application owns.
    ByEndpoint(&'static str),
    /// The column names an event, which an application sees once it was delivered to one of
    /// its endpoints.
    ByEvent(&'static str),
}

/// The condition that a row belongs to the application bound to parameter `n`. Added only for
/// an application's scope; the hub's sees every row.
pub fn within(dialect: Dialect, owned: Owned, n: usize) -> String {
    let p = match dialect {
        Dialect::Sqlite => format!("?{n}"),
        Dialect::Postgres => format!("${n}"),
    };
    match owned {
        Owned::Directly(column) => format!("{column} = {p}"),
        Owned::ByEndpoint(column) => {
            format!("{column} in (select id from endpoints where application_id = {p})")
        }
        Owned::ByEvent(column) => format!(
            "{column} in (select d.event_id from deliveries d \
             join endpoints o on o.id = d.endpoint_id where o.application_id = {p})"
        ),
    }
}

/// Events that pass `filter`: `columns` of the `events` table.
pub fn events(dialect: Dialect, columns: &str, scope: &Scope, filter: EventFilter) -> Query {
    // Event ids begin with their time, so a time range is an id range.
    let floor = |t| domain::id_floor(prefix::EVENT, t);
    Query::new(dialect, format!("select {columns} from events"))
        .and("type", "=", filter.event_type)
        .and("source", "=", filter.source)
        .and("dedupe_key", "=", filter.dedupe_key)
        .and(pair_of_body(dialect), "=", filter.pair)
        .and("id", ">=", filter.since.map(floor))
        .and("id", "<", filter.until.map(floor))
        .and("id", "<", filter.before)
        .within(scope, Owned::ByEvent("id"))
        .newest_first(filter.limit)
}

/// The event's pair, read from its stored body.
fn pair_of_body(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "json_extract(body, '$.data.pair')",
        Dialect::Postgres => "(body::jsonb #>> '{data,pair}')",
    }
}

/// Deliveries that pass `filter`: `columns` of the `deliveries` table.
pub fn deliveries(dialect: Dialect, columns: &str, scope: &Scope, filter: DeliveryFilter) -> Query {
    Query::new(dialect, format!("select {columns} from deliveries"))
        .and("endpoint_id", "=", filter.endpoint_id)
        .and("event_id", "=", filter.event_id)
        .and("status", "=", filter.status.map(|s| s.as_str().to_owned()))
        .and("id", "<", filter.before)
        .within(scope, Owned::ByEndpoint("endpoint_id"))
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
        let q = deliveries(Dialect::Postgres, "id", &Scope::Hub, filter.clone());
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
        let q = deliveries(Dialect::Sqlite, "id", &Scope::Hub, filter);
        assert_eq!(
            q.sql,
            "select id from deliveries where 1 = 1 and endpoint_id = ?1 and status = ?2 \
             order by id desc limit +?3"
        );
    }

    #[test]
    fn a_time_range_of_events_is_a_range_of_their_ids() {
        let q = events(
            Dialect::Sqlite,
            "id",
            &Scope::Hub,
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
             order by id desc limit +?3"
        );
        assert_eq!(
            q.args[..2],
            [
                Arg::Text(domain::id_floor(prefix::EVENT, 1_000)),
                Arg::Text(domain::id_floor(prefix::EVENT, 2_000)),
            ]
        );
    }

    #[test]
    fn an_application_sees_the_deliveries_of_its_own_endpoints_only() {
        let filter = DeliveryFilter {
            limit: 20,
            ..Default::default()
        };
        let q = deliveries(
            Dialect::Postgres,
            "id",
            &Scope::application("app_a"),
            filter,
        );
        assert_eq!(
            q.sql,
            "select id from deliveries where 1 = 1 and endpoint_id in \
             (select id from endpoints where application_id = $1) order by id desc limit $2"
        );
        assert_eq!(q.args, [Arg::Text("app_a".into()), Arg::Int(20)]);
    }
}
