//! Dynamic SQL with numbered placeholders that both SQLite and PostgreSQL accept, and the
//! search query model that the store turns into one such statement.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use crate::error::Result;
use crate::policy::Grant;

use super::{current_from_row, CurrentRow};

enum Argument {
    Text(String),
    Integer(i64),
}

/// A statement under construction: text with `$1, $2, …` and the values to bind.
pub(crate) struct Sql {
    text: String,
    arguments: Vec<Argument>,
}

impl Sql {
    pub(crate) fn new(start: &str) -> Self {
        Sql { text: start.to_owned(), arguments: Vec::new() }
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(crate) fn bind(&mut self, value: String) -> &mut Self {
        self.arguments.push(Argument::Text(value));
        self.text.push_str(&format!("${}", self.arguments.len()));
        self
    }

    pub(crate) fn bind_i64(&mut self, value: i64) -> &mut Self {
        self.arguments.push(Argument::Integer(value));
        self.text.push_str(&format!("${}", self.arguments.len()));
        self
    }

    /// Restricts `column` to the tenants the grant covers. This is the tenant predicate of
    /// every listing query; it is written here once, not by hand in each query.
    pub(crate) fn tenant_scope(&mut self, column: &str, grant: &Grant) -> &mut Self {
        let tenants = grant.visible_tenants();
        if tenants.is_empty() {
            return self.push("1 = 0");
        }
        self.push(column).push(" IN (");
        for (index, tenant) in tenants.iter().enumerate() {
            if index > 0 {
                self.push(", ");
            }
            self.bind(tenant.clone());
        }
        self.push(")")
    }

    pub(crate) async fn fetch_all(&self, connection: &mut AnyConnection) -> Result<Vec<AnyRow>> {
        let mut query = sqlx::query(&self.text);
        for argument in &self.arguments {
            query = match argument {
                Argument::Text(value) => query.bind(value.as_str()),
                Argument::Integer(value) => query.bind(*value),
            };
        }
        Ok(query.fetch_all(connection).await?)
    }
}

/// One condition of a search; all criteria of a query must hold (AND), the alternatives
/// inside one criterion are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// `_id=a,b`
    Id(Vec<String>),
    /// `_lastUpdated`: half-open intervals `[low, high)` over the stored fixed-width UTC
    /// timestamps, ORed; `None` is unbounded.
    LastUpdated(Vec<(Option<String>, Option<String>)>),
    /// A token parameter: `(system, code)` alternatives; `None` matches any.
    Token { param: String, alternatives: Vec<(Option<String>, Option<String>)> },
}

/// A search over the current versions of one resource type.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub resource_type: String,
    pub criteria: Vec<Criterion>,
    /// Keyset cursor: only ids greater than this one.
    pub after_id: Option<String>,
    pub limit: i64,
}

impl SearchQuery {
    fn push_conditions(&self, sql: &mut Sql, grant: &Grant) {
        sql.tenant_scope("r.tenant", grant);
        sql.push(" AND r.resource_type = ").bind(self.resource_type.clone());
        sql.push(" AND r.deleted = 0");
        for criterion in &self.criteria {
            sql.push(" AND (");
            match criterion {
                Criterion::Id(ids) => {
                    for (index, id) in ids.iter().enumerate() {
                        if index > 0 {
                            sql.push(" OR ");
                        }
                        sql.push("r.id = ").bind(id.clone());
                    }
                }
                Criterion::LastUpdated(ranges) => {
                    for (index, (low, high)) in ranges.iter().enumerate() {
                        if index > 0 {
                            sql.push(" OR ");
                        }
                        sql.push("(1 = 1");
                        if let Some(low) = low {
                            sql.push(" AND r.last_updated >= ").bind(low.clone());
                        }
                        if let Some(high) = high {
                            sql.push(" AND r.last_updated < ").bind(high.clone());
                        }
                        sql.push(")");
                    }
                }
                Criterion::Token { param, alternatives } => {
                    sql.push(
                        "EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = r.resource_type AND t.id = r.id AND t.param = ",
                    )
                    .bind(param.clone())
                    .push(" AND (");
                    for (index, (system, code)) in alternatives.iter().enumerate() {
                        if index > 0 {
                            sql.push(" OR ");
                        }
                        sql.push("(1 = 1");
                        if let Some(system) = system {
                            sql.push(" AND t.system = ").bind(system.clone());
                        }
                        if let Some(code) = code {
                            sql.push(" AND t.code = ").bind(code.clone());
                        }
                        sql.push(")");
                    }
                    sql.push("))");
                }
            }
            sql.push(")");
        }
    }
}

/// The matching current resources, ordered by id, one page after the cursor.
pub async fn search(connection: &mut AnyConnection, grant: &Grant, query: &SearchQuery) -> Result<Vec<CurrentRow>> {
    let mut sql = Sql::new(
        "SELECT r.resource_type, r.id, r.tenant, r.version_id, r.last_updated, r.deleted, r.content FROM resources r WHERE ",
    );
    query.push_conditions(&mut sql, grant);
    if let Some(after) = &query.after_id {
        sql.push(" AND r.id > ").bind(after.clone());
    }
    sql.push(" ORDER BY r.id LIMIT ").bind_i64(query.limit);
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(current_from_row).collect()
}

/// How many current resources match (cursor and limit ignored).
pub async fn count(connection: &mut AnyConnection, grant: &Grant, query: &SearchQuery) -> Result<i64> {
    use sqlx::Row;
    let mut sql = Sql::new("SELECT COUNT(*) AS n FROM resources r WHERE ");
    query.push_conditions(&mut sql, grant);
    let rows = sql.fetch_all(connection).await?;
    Ok(rows.first().map(|row| row.try_get::<i64, _>("n")).transpose()?.unwrap_or(0))
}
