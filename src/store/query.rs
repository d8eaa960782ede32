//! Dynamic SQL with numbered placeholders that both SQLite and PostgreSQL accept, and the
//! search query model that the store turns into one such statement.
//!
//! Every criterion becomes an `EXISTS` over an index table correlated with the resource row,
//! so filtering (and the tenant scope of the grant) happens inside the database: counts and
//! pages are exact. Chains and `_has` nest the same construction, applying the grant's
//! scope to the resources they pass through as well.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::Db;

use crate::error::Result;
use crate::policy::{Clause, Grant, Persons, ReachLevel, TypeSet};

use super::{current_from_row, CurrentRow};
use crate::search::{Criterion, DatePrefix, IndexTable, KeyValue, Match, NumberPrefix, SearchQuery, SortKey};

#[derive(Debug, Clone)]
enum Argument {
    Text(String),
    Integer(i64),
    Real(f64),
}

/// A statement under construction: text with `$1, $2, …` and the values to bind.
pub(crate) struct Sql {
    text: String,
    arguments: Vec<Argument>,
    aliases: usize,
    /// Where each placeholder starts in `text`, and its length. SQLite gets `?` in their
    /// place: sqlx binds an argument by asking SQLite the name of each parameter, a lookup
    /// linear in the number of named (`$N`) parameters, so binding a statement with named
    /// parameters costs their number squared (a tenth of the gateway's CPU time while it
    /// projected the audit trail's multi-row inserts); anonymous ones have no name to look up.
    placeholders: Vec<(usize, usize)>,
    /// Planned by PostgreSQL for its values every time it runs ([`Sql::planned_for_its_values`]).
    custom_plan: bool,
}

impl Sql {
    pub(crate) fn new(start: &str) -> Self {
        Sql { text: start.to_owned(), arguments: Vec::new(), aliases: 0, placeholders: Vec::new(), custom_plan: false }
    }

    /// Has PostgreSQL plan the statement for its actual values each time it runs (sent as an
    /// unnamed statement), instead of reusing the generic plan of a prepared one. For searches:
    /// a generic plan cannot see how skewed the index tables are — a common kana name prefix
    /// was sorted in full (10 ms) where the plan for the value walks the owner index in id
    /// order and stops after the page (2 ms; benches/README.md, session 3). Every other
    /// statement keeps its prepared plan: planning each of them every time was nearly half of
    /// PostgreSQL's CPU under audited reads (session 20).
    pub(crate) fn planned_for_its_values(&mut self) -> &mut Self {
        self.custom_plan = true;
        self
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(crate) fn bind(&mut self, value: impl Into<String>) -> &mut Self {
        self.arguments.push(Argument::Text(value.into()));
        self.placeholder()
    }

    pub(crate) fn bind_i64(&mut self, value: i64) -> &mut Self {
        self.arguments.push(Argument::Integer(value));
        self.placeholder()
    }

    fn bind_f64(&mut self, value: f64) -> &mut Self {
        self.arguments.push(Argument::Real(value));
        self.placeholder()
    }

    fn placeholder(&mut self) -> &mut Self {
        use std::fmt::Write as _;
        let start = self.text.len();
        // Written in place: a `format!` here was an allocation for every bound value.
        let _ = write!(self.text, "${}", self.arguments.len());
        self.placeholders.push((start, self.text.len() - start));
        self
    }

    /// The text as `connection`'s database is given it (see `placeholders`).
    fn text_for(&self, connection: &Db) -> std::borrow::Cow<'_, str> {
        if connection.0.backend_name() != "SQLite" || self.placeholders.is_empty() {
            return std::borrow::Cow::Borrowed(&self.text);
        }
        let mut text = String::with_capacity(self.text.len());
        let mut copied = 0;
        for (start, length) in &self.placeholders {
            text.push_str(&self.text[copied..*start]);
            text.push('?');
            copied = start + length;
        }
        text.push_str(&self.text[copied..]);
        std::borrow::Cow::Owned(text)
    }

    fn bind_key(&mut self, value: &KeyValue) -> &mut Self {
        match value {
            KeyValue::Text(text) => self.bind(text.clone()),
            KeyValue::Number(number) => self.bind_f64(*number),
        }
    }

    fn alias(&mut self, stem: &str) -> String {
        self.aliases += 1;
        format!("{stem}{}", self.aliases)
    }

    /// Restricts `column` to the municipalities whose rows the grant may cover at all. A
    /// pre-filter only (it lets queries use the tenant-leading indexes); the exact rule is
    /// [`Sql::access_scope`].
    pub(crate) fn tenant_scope(&mut self, column: &str, grant: &Grant) -> &mut Self {
        let tenants = grant.tenants();
        if tenants.is_empty() {
            return self.push("1 = 0");
        }
        self.push(column).push(" IN (");
        self.bind_list(tenants)
    }

    /// `$a, $b, …)` — binds each value and closes the parenthesis.
    pub(crate) fn bind_list(&mut self, values: &[String]) -> &mut Self {
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                self.push(", ");
            }
            self.bind(value.clone());
        }
        self.push(")")
    }

    /// Whether the person whose Patient id is the SQL expression `person` is one of
    /// `persons`. A reach is judged here, by the database, against the access links and
    /// registrations as they stand in this transaction: the values bound are the actor's
    /// references, its Organization, the municipalities and the time — never a list of persons.
    fn push_persons(&mut self, person: &str, persons: &Persons, now: &str) -> &mut Self {
        let reach = match persons {
            Persons::Listed(ids) => {
                self.push(&format!("{person} IN ("));
                return self.bind_list(ids);
            }
            Persons::Reached(reach) => reach,
        };
        self.push("(");
        if let Some(only) = &reach.only {
            self.push(&format!("{person} = ")).bind(only.clone()).push(" AND ");
        }
        // The registration link (the Patient's managingOrganization), which outlives the
        // Patient's deletion.
        let registered = |sql: &mut Sql, g: &str| {
            sql.push(&format!(
                "EXISTS (SELECT 1 FROM access_links {g} WHERE {g}.patient = {person} AND {g}.kind = 'registration' \
                 AND {g}.member = "
            ));
            sql.bind(format!("Organization/{}", reach.organization));
            sql.push(")");
        };
        let holds = |sql: &mut Sql, l: &str| {
            sql.push(&format!(" AND {l}.valid_from <= ")).bind(now.to_owned());
            sql.push(" AND ").bind(now.to_owned()).push(&format!(" < {l}.valid_to)"));
        };
        match reach.level {
            ReachLevel::Registration => {
                let (g, p) = (self.alias("g"), self.alias("p"));
                registered(self, &g);
                // The person is of one of the reach's municipalities (deleted or not).
                self.push(&format!(
                    " AND EXISTS (SELECT 1 FROM resources {p} WHERE {p}.resource_type = 'Patient' AND {p}.id = {person} \
                     AND {p}.tenant IN ("
                ));
                self.bind_list(&reach.tenants);
                self.push(")");
            }
            ReachLevel::Team => {
                let (p, t, c, g) = (self.alias("p"), self.alias("t"), self.alias("c"), self.alias("g"));
                self.push(&format!(
                    "EXISTS (SELECT 1 FROM resources {p} WHERE {p}.resource_type = 'Patient' AND {p}.id = {person} \
                     AND {p}.deleted = 0 AND {p}.tenant IN ("
                ));
                self.bind_list(&reach.tenants);
                self.push(&format!(
                    ") AND EXISTS (SELECT 1 FROM access_links {t} WHERE {t}.patient = {person} AND {t}.kind = 'team' \
                     AND {t}.member IN ("
                ));
                self.bind_list(&reach.members);
                holds(self, &t);
                self.push(&format!(
                    " AND (EXISTS (SELECT 1 FROM access_links {c} WHERE {c}.patient = {person} AND {c}.kind = 'consent' \
                     AND {c}.member = ''"
                ));
                holds(self, &c);
                self.push(" OR ");
                registered(self, &g);
                self.push(")");
            }
        }
        self.push(")")
    }

    /// `{person} IN (…)`: a superset of the persons whose rows of `resource_type` the grant
    /// may cover, drawn from its person clauses (the listed persons; a reach's team links or
    /// registrations) — a pre-filter that lets a count range over the actor's persons instead
    /// of everyone's; the exact rule is still [`Sql::access_scope`]. `1 = 1` when a clause
    /// covers the type otherwise than by person (see `Grant::judges_by_person`).
    pub(crate) fn candidate_persons(&mut self, person: &str, grant: &Grant, resource_type: &str) -> &mut Self {
        if !grant.judges_by_person(resource_type) {
            return self.push("1 = 1");
        }
        let mut terms = 0;
        self.push("(");
        for clause in grant.clauses() {
            let Clause::Persons { persons, .. } = clause else { continue };
            let covers_nobody = match persons {
                Persons::Listed(ids) => ids.is_empty(),
                Persons::Reached(reach) => reach.level == ReachLevel::Team && reach.members.is_empty(),
            };
            if covers_nobody {
                continue;
            }
            if terms > 0 {
                self.push(" OR ");
            }
            terms += 1;
            match persons {
                Persons::Listed(ids) => {
                    self.push(&format!("{person} IN ("));
                    self.bind_list(ids);
                }
                Persons::Reached(reach) => {
                    let c = self.alias("c");
                    self.push(&format!("{person} IN (SELECT {c}.patient FROM access_links {c} WHERE "));
                    self.push_link_of(&c, reach);
                    self.push(")");
                }
            }
        }
        if terms == 0 {
            self.push("1 = 0");
        }
        self.push(")")
    }

    /// Whether one of the grant's person clauses reaches `person` and covers `resource_type`
    /// through `param`: then every such resource naming the person through `param` is
    /// visible, whatever else the grant says (its clauses are ORed), so `(this OR
    /// access_scope)` is exactly the access predicate for those rows. Written so that a
    /// bound person is judged once per statement, not row by row: a person's board is
    /// read or counted without judging each of its items, and nobody else's is judged
    /// through it (the person, not one of the person's items, is judged).
    pub(crate) fn reaches_through(&mut self, person: Person<'_>, grant: &Grant, resource_type: &str, param: &str) -> &mut Self {
        let covering: Vec<&Persons> = grant
            .clauses()
            .iter()
            .filter_map(|clause| match clause {
                Clause::Persons { persons, params_by_type, .. }
                    if params_by_type.iter().any(|(t, params)| t == resource_type && params.iter().any(|p| p == param)) =>
                {
                    Some(persons)
                }
                _ => None,
            })
            .collect();
        if covering.is_empty() {
            return self.push("1 = 0");
        }
        match person {
            Person::Id(id) => {
                let one = self.alias("pp");
                self.push("EXISTS (SELECT 1 FROM (SELECT ").bind(id.to_owned()).push(&format!(" AS patient) {one} WHERE "));
                for (index, persons) in covering.into_iter().enumerate() {
                    if index > 0 {
                        self.push(" OR ");
                    }
                    self.push_persons(&format!("{one}.patient"), persons, grant.now());
                }
            }
            // A column: the persons reached, gathered once from the links that could reach
            // them, instead of judging each row's person anew.
            Person::Column(column) => {
                self.push("(");
                for (index, persons) in covering.into_iter().enumerate() {
                    if index > 0 {
                        self.push(" OR ");
                    }
                    let Persons::Reached(reach) = persons else {
                        self.push_persons(column, persons, grant.now());
                        continue;
                    };
                    let c = self.alias("c");
                    self.push(&format!("{column} IN (SELECT {c}.patient FROM access_links {c} WHERE "));
                    self.push_link_of(&c, reach);
                    self.push(" AND ");
                    self.push_persons(&format!("{c}.patient"), persons, grant.now());
                    self.push(")");
                }
            }
        }
        self.push(")")
    }

    /// `{c}.kind = … AND {c}.member …`: the access links through which `reach` can reach a
    /// person (a superset; [`Sql::push_persons`] is the rule).
    fn push_link_of(&mut self, c: &str, reach: &crate::policy::Reach) -> &mut Self {
        match reach.level {
            ReachLevel::Team => {
                self.push(&format!("{c}.kind = 'team' AND {c}.member IN ("));
                self.bind_list(&reach.members);
            }
            ReachLevel::Registration => {
                self.push(&format!("{c}.kind = 'registration' AND {c}.member = "));
                self.bind(format!("Organization/{}", reach.organization));
            }
        }
        if let Some(only) = &reach.only {
            self.push(&format!(" AND {c}.patient = ")).bind(only.clone());
        }
        self
    }

    /// The grant's exact predicate over the row `alias`, which has `resource_type`, `id` and
    /// `tenant` columns (a resource row, an index row or a version row): true when any of the
    /// grant's clauses covers the row. `types`, when the query knows its types, leaves out
    /// the clauses that cannot match. This is the one place where the access rule becomes SQL.
    pub(crate) fn access_scope(&mut self, alias: &str, grant: &Grant, types: Option<&[String]>) -> &mut Self {
        self.scope(alias, grant, types, Rows::Current)
    }

    /// The grant's predicate over a version row `alias` (`resource_versions`, which also has
    /// `version_id`): each version is judged by its own content — its own compartment rows —
    /// not by the resource's current state. Under a granular scope's filter (which the index
    /// of current content answers) only the current version is visible.
    pub(crate) fn access_scope_versions(&mut self, alias: &str, grant: &Grant, types: Option<&[String]>) -> &mut Self {
        self.scope(alias, grant, types, Rows::Versions)
    }

    fn scope(&mut self, alias: &str, grant: &Grant, types: Option<&[String]>, rows: Rows) -> &mut Self {
        let mut parts = 0;
        self.push("(");
        for clause in grant.clauses() {
            self.push_clause(alias, clause, types, grant, rows, &mut parts);
        }
        if parts == 0 {
            self.push("1 = 0");
        }
        self.push(")")
    }

    /// Appends one clause's disjuncts (each preceded by ` OR ` after the first), counting
    /// them in `parts`; clauses that cannot match the query's `types` add nothing.
    fn push_clause(&mut self, alias: &str, clause: &Clause, types: Option<&[String]>, grant: &Grant, rows: Rows, parts: &mut usize) {
        let relevant = |resource_type: &str| types.is_none_or(|types| types.iter().any(|t| t == resource_type));
        let open = |sql: &mut Sql, parts: &mut usize| {
            if *parts > 0 {
                sql.push(" OR ");
            }
            *parts += 1;
        };
        match clause {
            Clause::Tenants { types: allowed, tenants } => {
                if let Some(types) = types {
                    if !types.iter().any(|t| allowed.contains(t)) {
                        return;
                    }
                }
                open(self, parts);
                self.push(&format!("({alias}.tenant IN ("));
                self.bind_list(tenants);
                match allowed {
                    TypeSet::Only(only) => {
                        self.push(&format!(" AND {alias}.resource_type IN ("));
                        self.bind_list(only);
                    }
                    // An exclusion the query's own types already avoid is left out: planners
                    // took `resource_type NOT IN (…)` as a reason to range over the tenant
                    // index instead of the primary key (a timeline scanned 2,000,000 rows).
                    TypeSet::AllExcept(except)
                        if !except.is_empty() && types.is_none_or(|types| types.iter().any(|t| except.contains(t))) =>
                    {
                        self.push(&format!(" AND {alias}.resource_type NOT IN ("));
                        self.bind_list(except);
                    }
                    TypeSet::AllExcept(_) => {}
                }
                self.push(")");
            }
            Clause::Ids { resource_type, ids } => {
                if !relevant(resource_type) {
                    return;
                }
                open(self, parts);
                self.push(&format!("({alias}.resource_type = ")).bind(resource_type.clone());
                self.push(&format!(" AND {alias}.id IN ("));
                self.bind_list(ids);
                self.push(")");
            }
            Clause::Persons { persons, params_by_type, include_patient } => {
                if *include_patient && relevant("Patient") {
                    open(self, parts);
                    self.push(&format!("({alias}.resource_type = 'Patient' AND "));
                    self.push_persons(&format!("{alias}.id"), persons, grant.now());
                    self.push(")");
                }
                let linked: Vec<&(String, Vec<String>)> =
                    params_by_type.iter().filter(|(t, params)| relevant(t) && !params.is_empty()).collect();
                if linked.is_empty() {
                    return;
                }
                open(self, parts);
                let z = self.alias("z");
                let person = match rows {
                    Rows::Current => {
                        self.push(&format!(
                            "EXISTS (SELECT 1 FROM search_reference {z} WHERE {z}.resource_type = {alias}.resource_type \
                             AND {z}.id = {alias}.id AND {z}.target_type = 'Patient' AND "
                        ));
                        format!("{z}.target_id")
                    }
                    Rows::Versions => {
                        self.push(&format!(
                            "EXISTS (SELECT 1 FROM version_compartment {z} WHERE {z}.resource_type = {alias}.resource_type \
                             AND {z}.id = {alias}.id AND {z}.version_id = {alias}.version_id AND "
                        ));
                        format!("{z}.patient")
                    }
                };
                self.push("(");
                for (index, (resource_type, params)) in linked.iter().enumerate() {
                    if index > 0 {
                        self.push(" OR ");
                    }
                    self.push(&format!("({z}.resource_type = ")).bind(resource_type.clone());
                    self.push(&format!(" AND {z}.param IN ("));
                    self.bind_list(params);
                    self.push(")");
                }
                self.push(") AND ");
                self.push_persons(&person, persons, grant.now());
                // A test of the row at hand, and written so for PostgreSQL: `OFFSET 0` keeps
                // it from turning the EXISTS into a join or a hashed list of every row the
                // actor may see — which it chose when a person's references were many
                // (22,000 on one board: 120–210 ms to read a page of 20 by key instead of
                // well under a millisecond). SQLite always tests row by row.
                self.push(" LIMIT 1 OFFSET 0)");
            }
            Clause::Filtered { resource_type, any_of, base } => {
                if !relevant(resource_type) {
                    return;
                }
                let only = [resource_type.clone()];
                open(self, parts);
                self.push("((");
                let mut base_parts = 0;
                self.push_clause(alias, base, Some(&only), grant, rows, &mut base_parts);
                if base_parts == 0 {
                    self.push("1 = 0");
                }
                if rows == Rows::Versions {
                    let c = self.alias("c");
                    self.push(&format!(
                        ") AND EXISTS (SELECT 1 FROM resources {c} WHERE {c}.resource_type = {alias}.resource_type \
                         AND {c}.id = {alias}.id AND {c}.version_id = {alias}.version_id"
                    ));
                }
                self.push(&format!(") AND {alias}.resource_type = ")).bind(resource_type.clone()).push(" AND (");
                for (index, criteria) in any_of.iter().enumerate() {
                    if index > 0 {
                        self.push(" OR ");
                    }
                    self.push("(1 = 1");
                    push_criteria(self, alias, Some(resource_type.as_str()), criteria, grant);
                    self.push(")");
                }
                self.push("))");
            }
        }
    }

    fn query<'q>(&'q self, text: &'q str, connection: &Db) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let mut query = sqlx::query(text).persistent(!(self.custom_plan && connection.0.backend_name() == "PostgreSQL"));
        for argument in &self.arguments {
            query = match argument {
                Argument::Text(value) => query.bind(value.as_str()),
                Argument::Integer(value) => query.bind(*value),
                Argument::Real(value) => query.bind(*value),
            };
        }
        query
    }

    pub(crate) async fn execute(&self, connection: &mut Db) -> Result<()> {
        let text = self.text_for(connection);
        self.query(&text, connection).execute(&mut connection.0).await?;
        Ok(())
    }

    /// Executes the statement; returns how many rows it changed.
    pub(crate) async fn execute_counting(&self, connection: &mut Db) -> Result<u64> {
        let text = self.text_for(connection);
        Ok(self.query(&text, connection).execute(&mut connection.0).await?.rows_affected())
    }

    /// The statement text (for EXPLAIN in benchmarks).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) async fn fetch_all(&self, connection: &mut Db) -> Result<Vec<AnyRow>> {
        let text = self.text_for(connection);
        Ok(self.query(&text, connection).fetch_all(&mut connection.0).await?)
    }
}

/// Which rows an access predicate judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Current resources (or their index rows): by the current index.
    Current,
    /// Versions: by each version's own compartment.
    Versions,
}

/// A page of results, with the sort key values of its first and last rows.
pub struct Page {
    pub rows: Vec<CurrentRow>,
    pub first_keys: Option<Vec<KeyValue>>,
    pub last_keys: Option<Vec<KeyValue>>,
    /// Whether more rows lie beyond the page in the direction of travel.
    pub more: bool,
    /// How many matches the page found. A first page without `more` found every match:
    /// this is their total, and the search needs no count.
    pub matched: usize,
}

/// Appends `AND (criterion)` for each criterion on the resource row `alias`, whose type is
/// `resource_type` when known (one type), which lets index criteria be written as
/// `alias.id IN (SELECT id FROM index WHERE resource_type = … )`: both databases then drive
/// the query from the index instead of testing every resource row.
fn push_criteria(sql: &mut Sql, alias: &str, resource_type: Option<&str>, criteria: &[Criterion], grant: &Grant) {
    for criterion in criteria {
        sql.push(" AND (");
        push_criterion(sql, alias, resource_type, criterion, grant);
        sql.push(")");
    }
}

fn push_criterion(sql: &mut Sql, alias: &str, resource_type: Option<&str>, criterion: &Criterion, grant: &Grant) {
    match criterion {
        Criterion::Id(ids) => {
            sql.push(&format!("{alias}.id IN ("));
            for (index, id) in ids.iter().enumerate() {
                if index > 0 {
                    sql.push(", ");
                }
                sql.bind(id.clone());
            }
            sql.push(")");
        }
        Criterion::LastUpdated(ranges) => {
            push_or(sql, ranges, |sql, (low, high)| {
                sql.push("(1 = 1");
                if let Some(low) = low {
                    sql.push(&format!(" AND {alias}.last_updated >= ")).bind(low.clone());
                }
                if let Some(high) = high {
                    sql.push(&format!(" AND {alias}.last_updated < ")).bind(high.clone());
                }
                sql.push(")");
            });
        }
        Criterion::Index { table, param, matches, negate } => {
            push_index_test(sql, alias, resource_type, *table, *negate, param, grant, &|sql, x| {
                sql.push(" AND (");
                push_or(sql, matches, |sql, m| push_match(sql, x, m));
                sql.push(")");
            });
        }
        Criterion::Missing { table, param, missing } => {
            push_index_test(sql, alias, resource_type, *table, *missing, param, grant, &|_, _| {});
        }
        Criterion::Chain { param, target_type, criteria } => {
            let (c, t) = (sql.alias("c"), sql.alias("t"));
            let references = index_source(IndexTable::Reference, resource_type.unwrap_or_default());
            let join = format!(
                "FROM {references} {c} JOIN resources {t} ON {t}.resource_type = {c}.target_type AND {t}.id = {c}.target_id WHERE "
            );
            match resource_type {
                Some(resource_type) => {
                    sql.push(&format!("{alias}.id IN (SELECT {c}.id {join}{c}.resource_type = ")).bind(resource_type.to_owned());
                }
                None => {
                    sql.push(&format!("EXISTS (SELECT 1 {join}{c}.resource_type = {alias}.resource_type AND {c}.id = {alias}.id"));
                }
            }
            sql.push(&format!(" AND {c}.param = ")).bind(param.clone());
            if let Some(target_type) = target_type {
                sql.push(&format!(" AND {c}.target_type = ")).bind(target_type.clone());
            }
            sql.push(&format!(" AND {t}.deleted = 0 AND "));
            sql.tenant_scope(&format!("{t}.tenant"), grant);
            sql.push(" AND ");
            let target_types = target_type.clone().map(|t| vec![t]);
            sql.access_scope(&t, grant, target_types.as_deref());
            push_criteria(sql, &t, target_type.as_deref(), criteria, grant);
            sql.push(")");
        }
        Criterion::Has { source_type, param, criteria } => {
            let (h, src) = (sql.alias("h"), sql.alias("s"));
            let references = index_source(IndexTable::Reference, source_type);
            let join = format!(
                "FROM {references} {h} JOIN resources {src} ON {src}.resource_type = {h}.resource_type AND {src}.id = {h}.id WHERE "
            );
            match resource_type {
                Some(resource_type) => {
                    sql.push(&format!("{alias}.id IN (SELECT {h}.target_id {join}{h}.target_type = ")).bind(resource_type.to_owned());
                }
                None => {
                    sql.push(&format!("EXISTS (SELECT 1 {join}{h}.target_type = {alias}.resource_type AND {h}.target_id = {alias}.id"));
                }
            }
            sql.push(&format!(" AND {h}.param = "))
                .bind(param.clone())
                .push(&format!(" AND {h}.resource_type = "))
                .bind(source_type.clone())
                .push(&format!(" AND {src}.deleted = 0 AND "));
            sql.tenant_scope(&format!("{src}.tenant"), grant);
            sql.push(" AND ");
            sql.access_scope(&src, grant, Some(std::slice::from_ref(source_type)));
            push_criteria(sql, &src, Some(source_type.as_str()), criteria, grant);
            sql.push(")");
        }
        Criterion::Everything { patient_id, params_by_type } => push_everything(sql, alias, patient_id, params_by_type),
        Criterion::Compartment { params, target_type, target_id } => {
            let x = sql.alias("x");
            match resource_type {
                Some(resource_type) => {
                    let references = index_source(IndexTable::Reference, resource_type);
                    sql.push(&format!("{alias}.id IN (SELECT {x}.id FROM {references} {x} WHERE {x}.resource_type = "))
                        .bind(resource_type.to_owned());
                }
                None => {
                    sql.push(&format!(
                        "EXISTS (SELECT 1 FROM search_reference {x} WHERE {x}.resource_type = {alias}.resource_type AND {x}.id = {alias}.id"
                    ));
                }
            }
            sql.push(&format!(" AND {x}.target_type = "))
                .bind(target_type.clone())
                .push(&format!(" AND {x}.target_id = "))
                .bind(target_id.clone())
                .push(&format!(" AND {x}.param IN ("));
            for (index, param) in params.iter().enumerate() {
                if index > 0 {
                    sql.push(", ");
                }
                sql.bind(param.clone());
            }
            sql.push("))");
        }
    }
}

/// Writes `alias.id [NOT] IN (SELECT x.id FROM table x WHERE … AND x.param = ? …)`, with
/// `body` adding conditions on the index alias `x` (or the correlated `[NOT] EXISTS` form
/// when the alias's type is not known; an AuditEvent row is then tested against its own
/// index, uncorrelated: a test correlated into a view of several tables reads them whole).
#[allow(clippy::too_many_arguments)]
fn push_index_test(
    sql: &mut Sql,
    alias: &str,
    resource_type: Option<&str>,
    table: IndexTable,
    negate: bool,
    param: &str,
    grant: &Grant,
    body: &dyn Fn(&mut Sql, &str),
) {
    let x = sql.alias("x");
    let negation = if negate { "NOT " } else { "" };
    match resource_type {
        Some(resource_type) => {
            sql.push(&format!("{alias}.id {negation}IN (SELECT {x}.id FROM {} {x} WHERE ", index_source(table, resource_type)));
            sql.tenant_scope(&format!("{x}.tenant"), grant);
            sql.push(&format!(" AND {x}.resource_type = ")).bind(resource_type.to_owned());
            sql.push(&format!(" AND {x}.param = ")).bind(param.to_owned());
            body(sql, &x);
            sql.push(")");
        }
        None => {
            sql.push(&format!(
                "{negation}(EXISTS (SELECT 1 FROM {} {x} WHERE {x}.resource_type = {alias}.resource_type AND {x}.id = {alias}.id",
                table.name()
            ));
            sql.push(&format!(" AND {x}.param = ")).bind(param.to_owned());
            body(sql, &x);
            sql.push(")");
            let audit = index_source(table, AUDIT_EVENT);
            if audit != table.name() {
                let y = sql.alias("x");
                sql.push(&format!(" OR ({alias}.resource_type = '{AUDIT_EVENT}' AND {alias}.id IN (SELECT {y}.id FROM {audit} {y} WHERE {y}.param = "));
                sql.bind(param.to_owned());
                body(sql, &y);
                sql.push("))");
            }
            sql.push(")");
        }
    }
}

pub(crate) const AUDIT_EVENT: &str = "AuditEvent";

/// What a criterion on `table` reads for `resource_type`: AuditEvents have an index of their
/// own (`audit_index`, `audit_terms`: one row an event and one a reference, where the generic
/// tables took twelve rows in four tables), read through views with the generic tables' shape.
fn index_source(table: IndexTable, resource_type: &str) -> &'static str {
    match (resource_type, table) {
        (AUDIT_EVENT, IndexTable::Token) => "audit_search_token",
        (AUDIT_EVENT, IndexTable::Reference) => "audit_search_reference",
        (AUDIT_EVENT, IndexTable::Date) => "audit_search_date",
        _ => table.name(),
    }
}

fn push_everything(sql: &mut Sql, alias: &str, patient_id: &str, params_by_type: &[(String, Vec<String>)]) {
    let x = sql.alias("x");
    sql.push(&format!("({alias}.resource_type = 'Patient' AND {alias}.id = ")).bind(patient_id.to_owned());
    sql.push(&format!(
        ") OR EXISTS (SELECT 1 FROM search_reference {x} WHERE {x}.resource_type = {alias}.resource_type AND {x}.id = {alias}.id \
         AND {x}.target_type = 'Patient' AND {x}.target_id = "
    ))
    .bind(patient_id.to_owned())
    .push(" AND (");
    push_or(sql, params_by_type, |sql, (resource_type, params)| {
        sql.push(&format!("({x}.resource_type = ")).bind(resource_type.clone()).push(&format!(" AND {x}.param IN ("));
        for (index, param) in params.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            sql.bind(param.clone());
        }
        sql.push("))");
    });
    sql.push("))");
}

fn push_or<T>(sql: &mut Sql, items: &[T], mut each: impl FnMut(&mut Sql, &T)) {
    if items.is_empty() {
        sql.push("1 = 0");
        return;
    }
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            sql.push(" OR ");
        }
        each(sql, item);
    }
}

fn push_match(sql: &mut Sql, x: &str, m: &Match) {
    match m {
        Match::StringRange { low, high } => {
            sql.push(&format!("({x}.normalized >= ")).bind(low.clone()).push(&format!(" AND {x}.normalized < ")).bind(high.clone()).push(")");
        }
        Match::StringExact(text) => {
            sql.push(&format!("{x}.exact = ")).bind(text.clone());
        }
        Match::StringContains(text) => {
            sql.push(&format!("{x}.normalized LIKE ")).bind(format!("%{}%", escape_like(text))).push(" ESCAPE '\\'");
        }
        Match::Token { system, code } => {
            sql.push("(1 = 1");
            if let Some(system) = system {
                sql.push(&format!(" AND {x}.system = ")).bind(system.clone());
            }
            if let Some(code) = code {
                sql.push(&format!(" AND {x}.code = ")).bind(code.clone());
            }
            sql.push(")");
        }
        Match::TokenText(text) => {
            sql.push(&format!("{x}.text LIKE ")).bind(format!("%{}%", escape_like(text))).push(" ESCAPE '\\'");
        }
        Match::Reference { target_type, target_id } => {
            sql.push(&format!("({x}.target_id = ")).bind(target_id.clone());
            if let Some(target_type) = target_type {
                sql.push(&format!(" AND {x}.target_type = ")).bind(target_type.clone());
            }
            sql.push(")");
        }
        Match::ReferenceUrl(url) => {
            sql.push(&format!("{x}.url = ")).bind(url.clone());
        }
        Match::ReferenceIdentifier { system, value } => {
            sql.push(&format!("({x}.identifier_value = ")).bind(value.clone());
            if let Some(system) = system {
                sql.push(&format!(" AND {x}.identifier_system = ")).bind(system.clone());
            }
            sql.push(")");
        }
        Match::Date { prefix, low, high } => {
            let (lo, hi) = (format!("{x}.low"), format!("{x}.high"));
            match prefix {
                DatePrefix::Eq => {
                    sql.push(&format!("({lo} >= ")).bind(low.clone()).push(&format!(" AND {hi} <= ")).bind(high.clone()).push(")");
                }
                DatePrefix::Ne => {
                    sql.push(&format!("NOT ({lo} >= ")).bind(low.clone()).push(&format!(" AND {hi} <= ")).bind(high.clone()).push(")");
                }
                DatePrefix::Gt => {
                    sql.push(&format!("{hi} > ")).bind(high.clone());
                }
                DatePrefix::Lt => {
                    sql.push(&format!("{lo} < ")).bind(low.clone());
                }
                DatePrefix::Ge => {
                    sql.push(&format!("({hi} > ")).bind(high.clone()).push(&format!(" OR ({lo} >= ")).bind(low.clone());
                    sql.push(&format!(" AND {hi} <= ")).bind(high.clone()).push("))");
                }
                DatePrefix::Le => {
                    sql.push(&format!("({lo} < ")).bind(low.clone()).push(&format!(" OR ({lo} >= ")).bind(low.clone());
                    sql.push(&format!(" AND {hi} <= ")).bind(high.clone()).push("))");
                }
                DatePrefix::Sa => {
                    sql.push(&format!("{lo} >= ")).bind(high.clone());
                }
                DatePrefix::Eb => {
                    sql.push(&format!("{hi} <= ")).bind(low.clone());
                }
                DatePrefix::Ap => {
                    sql.push(&format!("({lo} < ")).bind(high.clone()).push(&format!(" AND {hi} > ")).bind(low.clone()).push(")");
                }
            }
        }
        Match::Number { prefix, low, high, system, code } => {
            let v = format!("{x}.value");
            sql.push("(");
            match prefix {
                NumberPrefix::Within => {
                    sql.push(&format!("{v} >= ")).bind_f64(*low).push(&format!(" AND {v} < ")).bind_f64(*high);
                }
                NumberPrefix::Outside => {
                    sql.push(&format!("({v} < ")).bind_f64(*low).push(&format!(" OR {v} >= ")).bind_f64(*high).push(")");
                }
                NumberPrefix::Gt => {
                    sql.push(&format!("{v} > ")).bind_f64(*low);
                }
                NumberPrefix::Lt => {
                    sql.push(&format!("{v} < ")).bind_f64(*low);
                }
                NumberPrefix::Ge => {
                    sql.push(&format!("{v} >= ")).bind_f64(*low);
                }
                NumberPrefix::Le => {
                    sql.push(&format!("{v} <= ")).bind_f64(*low);
                }
            }
            if let Some(system) = system {
                sql.push(&format!(" AND {x}.system = ")).bind(system.clone());
            }
            if let Some(code) = code {
                sql.push(&format!(" AND {x}.code = ")).bind(code.clone());
            }
            sql.push(")");
        }
        Match::UriEquals(uri) => {
            sql.push(&format!("{x}.uri = ")).bind(uri.clone());
        }
        Match::UriBelow(prefix) => {
            sql.push(&format!("({x}.uri = ")).bind(prefix.clone()).push(&format!(" OR {x}.uri LIKE ")).bind(format!("{}/%", escape_like(prefix.trim_end_matches('/')))).push(" ESCAPE '\\')");
        }
        Match::UriAbove(prefixes) => {
            sql.push(&format!("{x}.uri IN ("));
            for (index, prefix) in prefixes.iter().enumerate() {
                if index > 0 {
                    sql.push(", ");
                }
                sql.bind(prefix.clone());
            }
            sql.push(")");
        }
    }
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The SQL expression of a sort key on the row `alias` of `source`.
fn sort_expression(sql: &mut Sql, alias: &str, key: &SortKey, source: &Source<'_>, resource_type: Option<&str>) {
    match key {
        SortKey::Id => {
            sql.push(&format!("{alias}.id"));
        }
        SortKey::LastUpdated => {
            sql.push(&format!("{alias}.last_updated"));
        }
        // A board row carries its item's `sent` (the same instant the date index holds).
        SortKey::Index { table: IndexTable::Date, param } if param == "sent" && matches!(source, Source::Board { .. }) => {
            sql.push(&format!("{alias}.sent"));
        }
        // An AuditEvent's date and one-valued tokens are columns of its own index row.
        SortKey::Index { table: IndexTable::Date | IndexTable::Token, param }
            if resource_type == Some(AUDIT_EVENT) && (param == "date" || super::audit::TOKEN_COLUMNS.contains(&param.as_str())) =>
        {
            let column = if param == "date" { "date_low".to_owned() } else { format!("{param}_code") };
            let x = sql.alias("o");
            sql.push(&format!("COALESCE((SELECT {x}.{column} FROM audit_index {x} WHERE {x}.id = {alias}.id), '')"));
        }
        SortKey::Index { table, param } => {
            let (column, numeric) = table.sort_column();
            let x = sql.alias("o");
            sql.push(&format!(
                "COALESCE((SELECT MIN({x}.{column}) FROM {} {x} WHERE {x}.resource_type = {alias}.resource_type AND {x}.id = {alias}.id AND {x}.param = ",
                index_source(*table, resource_type.unwrap_or_default())
            ))
            .bind(param.clone())
            .push(if numeric { "), -1.0e300)" } else { "), '')" });
        }
    }
}

/// A person in a statement: a Patient id to bind, or a column holding one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Person<'a> {
    Id(&'a str),
    Column(&'a str),
}

/// The rows a search statement ranges over.
enum Source<'q> {
    /// The resource rows (`r`).
    Resources,
    /// The index rows of one positive criterion (`d`), the criterion at `position`.
    Index { position: usize, table: IndexTable, param: &'q str, matches: &'q [Match] },
    /// One person's board and chat items (`board_items`, `d`), in `sent` order; the
    /// criterion at `position` names the person.
    Board { position: usize, patient: &'q str },
}

impl Source<'_> {
    /// The alias of the row the statement ranges over: an index or board row (`d`) or a
    /// resource row (`r`).
    fn alias(&self) -> &'static str {
        match self {
            Source::Resources => "r",
            Source::Index { .. } | Source::Board { .. } => "d",
        }
    }
}

impl SearchQuery {
    /// Where the statement ranges: a person's board (see [`SearchQuery::board_listing`]),
    /// else the index rows of a driving criterion, else the resource rows.
    fn source(&self) -> Source<'_> {
        if let Some((position, patient)) = self.board_listing() {
            return Source::Board { position, patient };
        }
        match self.driving_criterion() {
            Some((position, table, param, matches)) => Source::Index { position, table, param, matches },
            None => Source::Resources,
        }
    }

    /// The person whose board this search lists newest (or oldest) first: Communications of
    /// one `subject` (or `patient`) Patient, restricted by `category` to board and chat
    /// kinds, sorted by `sent`. Every such Communication has a `board_items` row (derived at
    /// each write, entered-in-error ones included), ordered by (person, sent, id): the page
    /// is read by walking that index and stops after it, where ranging over the person's
    /// reference rows sorted them all first (141 ms for a page of a board of 11,000 items,
    /// benches/README.md). The other criteria still apply to each row.
    fn board_listing(&self) -> Option<(usize, &str)> {
        if self.resource_types.len() != 1 || self.resource_types.first().map(String::as_str) != Some("Communication") {
            return None;
        }
        let by_sent = |key: &SortKey| matches!(key, SortKey::Index { table: IndexTable::Date, param } if param == "sent");
        if !self.sort.first().is_some_and(|(key, _)| by_sent(key))
            || self.sort.iter().skip(1).any(|(key, _)| !by_sent(key) && *key != SortKey::Id)
            || self.criteria.iter().any(|c| matches!(c, Criterion::LastUpdated(_)))
        {
            return None;
        }
        let board_kind = |m: &Match| {
            matches!(m, Match::Token { system: Some(system), code: Some(code) }
                if system == crate::fhir::board::KIND_SYSTEM && (code == "board" || code == "chat"))
        };
        let only_board = self.criteria.iter().any(|c| {
            matches!(c, Criterion::Index { table: IndexTable::Token, param, matches, negate: false }
                if param == "category" && !matches.is_empty() && matches.iter().all(board_kind))
        });
        if !only_board {
            return None;
        }
        self.criteria.iter().enumerate().find_map(|(position, c)| match c {
            Criterion::Index { table: IndexTable::Reference, param, matches, negate: false } if param == "subject" || param == "patient" => {
                match matches.as_slice() {
                    [Match::Reference { target_type: Some(target_type), target_id }] if target_type == "Patient" => {
                        Some((position, target_id.as_str()))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Whether PostgreSQL should plan this search for its values each time
    /// ([`Sql::planned_for_its_values`]): yes, unless every match names one person
    /// ([`SearchQuery::pinned_person`]) — then the rows are that person's, found by the
    /// reference index, and planning the access predicate's subqueries for the values took
    /// seven times as long as running the statement (3.8 ms against 0.5 ms for a timeline's
    /// count, benches/README.md, session 20).
    fn plans_for_values(&self) -> bool {
        self.pinned_person().is_none()
    }

    /// A Patient every match names: a positive criterion on a reference parameter with one
    /// target, `Patient/{id}` (its parameter and the id).
    fn pinned_person(&self) -> Option<(&str, &str)> {
        self.criteria.iter().find_map(|c| match c {
            Criterion::Index { table: IndexTable::Reference, param, matches, negate: false } => match matches.as_slice() {
                [Match::Reference { target_type: Some(target_type), target_id }] if target_type == "Patient" => Some((param.as_str(), target_id.as_str())),
                _ => None,
            },
            _ => None,
        })
    }

    /// The index criterion a statement can range over instead of the resource table: the
    /// first positive string criterion of a one-type search that neither filters nor sorts on
    /// `_lastUpdated` (a resource-table column), else a reference criterion naming its
    /// targets when the page is sorted by an indexed value. This relies on an invariant of the store:
    /// index rows exist only for current, live resources and carry their tenant, so the
    /// match set never needs the (large) resource rows; only the page is read from them.
    fn driving_criterion(&self) -> Option<(usize, IndexTable, &str, &[Match])> {
        if self.resource_types.len() != 1
            || self.sort.iter().any(|(key, _)| *key == SortKey::LastUpdated)
            || self.criteria.iter().any(|c| matches!(c, Criterion::LastUpdated(_)))
        {
            return None;
        }
        // Only string criteria: their index covers the id, so the range is read from the
        // index alone. Other index tables are better used through `id IN (…)`, which lets the
        // planner drive from the resource's primary key (measured: an identifier lookup went
        // from 0.3 ms to 120 ms on SQLite when driven from the token table, because the planner
        // walked the table in id order to satisfy ORDER BY … LIMIT).
        let string = self.criteria.iter().enumerate().find_map(|(position, criterion)| match criterion {
            Criterion::Index { table: IndexTable::String, param, matches, negate: false } => {
                Some((position, IndexTable::String, param.as_str(), matches.as_slice()))
            }
            _ => None,
        });
        // A reference to given resources (`subject=Patient/…`), when the page is sorted by an
        // indexed value (a person's timeline, `_sort=-sent`): no index yields that order, so
        // the matches are sorted whatever drives; starting from the target's reference rows
        // reads only them. Otherwise PostgreSQL, once its statistics saw many rows of the
        // type, ranged over the municipality's rows of the type and judged each by the
        // access predicate (16 req/s for a timeline instead of ~150, issue #13).
        let sorted_by_index = self.sort.iter().any(|(key, _)| matches!(key, SortKey::Index { .. }));
        string.or_else(|| {
            self.criteria.iter().enumerate().find_map(|(position, criterion)| match criterion {
                Criterion::Index { table: IndexTable::Reference, param, matches, negate: false }
                    if sorted_by_index
                        && !matches.is_empty()
                        && matches.iter().all(|m| matches!(m, Match::Reference { target_type: Some(_), .. })) =>
                {
                    Some((position, IndexTable::Reference, param.as_str(), matches.as_slice()))
                }
                _ => None,
            })
        })
    }

    /// Writes `FROM … WHERE …` (every criterion and the grant's scope) over the row alias
    /// returned by [`SearchQuery::alias`].
    fn push_source(&self, sql: &mut Sql, grant: &Grant) {
        let resource_type = self.resource_types.first().cloned().unwrap_or_default();
        match self.source() {
            Source::Index { position, table, param, matches } => {
                sql.push(&format!(" FROM {} d WHERE ", index_source(table, &resource_type)));
                sql.tenant_scope("d.tenant", grant);
                sql.push(" AND ");
                match self.pinned_person() {
                    // Every match names the person through `param`: where a clause of the grant
                    // reaches persons through that parameter, the person is judged once (the
                    // clause holds for every such row), else each row as below. A person's
                    // timeline tested the access predicate on each of their Communications,
                    // for the count and again for the page (benches/README.md, session 20).
                    Some((param, patient)) => {
                        sql.push("(");
                        sql.reaches_through(Person::Id(patient), grant, &resource_type, param);
                        sql.push(" OR ");
                        sql.access_scope("d", grant, Some(std::slice::from_ref(&resource_type)));
                        sql.push(")");
                    }
                    None => {
                        sql.access_scope("d", grant, Some(std::slice::from_ref(&resource_type)));
                    }
                }
                sql.push(" AND d.resource_type = ").bind(resource_type.clone());
                sql.push(" AND d.param = ").bind(param.to_owned()).push(" AND (");
                push_or(sql, matches, |sql, m| push_match(sql, "d", m));
                sql.push(")");
                let rest = self.criteria_except(position);
                push_criteria(sql, "d", Some(resource_type.as_str()), &rest, grant);
            }
            Source::Board { position, patient } => {
                sql.push(" FROM board_items d WHERE d.patient = ").bind(patient.to_owned());
                sql.push(" AND d.resource_type = ").bind(resource_type.clone()).push(" AND ");
                sql.tenant_scope("d.tenant", grant);
                // The person judged once (every row is theirs through `subject`), else each row.
                sql.push(" AND (");
                sql.reaches_through(Person::Id(patient), grant, &resource_type, "subject");
                sql.push(" OR ");
                sql.access_scope("d", grant, Some(std::slice::from_ref(&resource_type)));
                sql.push(")");
                // Each criterion as a correlated test of the row at hand (no type given): the
                // walk stops after the page, where `id IN (SELECT …)` would first gather
                // every match in the municipality (70 ms for a board of 11,000 items). Under
                // `1 = 0 OR`, which PostgreSQL folds only after deciding joins: as top-level
                // EXISTS it made them semi-joins, misjudged how many rows pass them, and
                // sorted all 11,000 items instead of walking the index (270 ms). The
                // criterion naming the person is what the row is: left out.
                let rest = self.criteria_except(position);
                sql.push(" AND (1 = 0 OR (1 = 1");
                push_criteria(sql, "d", None, &rest, grant);
                sql.push("))");
            }
            Source::Resources => {
                sql.push(" FROM resources r WHERE ");
                self.base(sql, grant);
            }
        }
    }

    /// Every criterion but the one at `position` (the one the source already is).
    fn criteria_except(&self, position: usize) -> Vec<Criterion> {
        self.criteria.iter().enumerate().filter(|(i, _)| *i != position).map(|(_, c)| c.clone()).collect()
    }

    fn keys(&self) -> Vec<(SortKey, bool)> {
        let mut keys = self.sort.clone();
        keys.push((SortKey::Id, false));
        keys
    }

    fn base(&self, sql: &mut Sql, grant: &Grant) {
        sql.tenant_scope("r.tenant", grant);
        sql.push(" AND ");
        sql.access_scope("r", grant, Some(&self.resource_types));
        sql.push(" AND r.resource_type IN (");
        for (index, resource_type) in self.resource_types.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            sql.bind(resource_type.clone());
        }
        sql.push(") AND r.deleted = 0");
        let single = match self.resource_types.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        push_criteria(sql, "r", single, &self.criteria, grant);
    }
}

/// The SQL of one page of a search (shared by [`search`] and [`explain`]): the page's
/// current rows with their sort keys (`k0`, `k1`, …), in sort order, one more than the limit.
fn search_sql(grant: &Grant, query: &SearchQuery, connection_is_sqlite: bool) -> Sql {
    let keys = query.keys();
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    let order = |sql: &mut Sql, prefix: &str| {
        sql.push(" ORDER BY ");
        for (index, (_, descending)) in keys.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            let ascending = *descending == backwards;
            sql.push(&format!("{prefix}k{index}{}", if ascending { " ASC" } else { " DESC" }));
        }
    };
    // The inner statement selects and sorts only the keys, so sorting many matches never
    // carries their JSON along; the page's rows are then joined by primary key. One
    // statement judges the rows once: its snapshot is the one the access predicate saw
    // (reading the page by id in a second statement judged every row again — on PostgreSQL
    // about 0.3 ms a page, benches/README.md, session 27).
    // SQLite is told to look the rows up by primary key: its statistics, sampled with
    // `analysis_limit`, once rated the (tenant, type, lastUpdated) index better, and reading
    // a page of 20 Patients walked the municipality's 22,000 (24 ms; 4 ms with the key,
    // session 12). A subquery with a LIMIT is never flattened into the join.
    let mut sql = Sql::new("SELECT cur.resource_type AS resource_type, cur.id AS id, cur.tenant AS tenant, cur.version_id AS version_id, cur.last_updated AS last_updated, cur.deleted AS deleted, cur.content AS content");
    for index in 0..keys.len() {
        sql.push(&format!(", page.k{index} AS k{index}"));
    }
    sql.push(" FROM (");
    let source = query.source();
    let alias = source.alias();
    let single_type = match query.resource_types.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    };
    // An index row source may hold several matching rows per resource: DISTINCT. A board
    // row is one per item.
    let distinct = if matches!(source, Source::Index { .. }) { "DISTINCT " } else { "" };
    sql.push(&format!("SELECT {distinct}{alias}.resource_type AS resource_type, {alias}.id AS id"));
    for (index, (key, _)) in keys.iter().enumerate() {
        sql.push(", ");
        sort_expression(&mut sql, alias, key, &source, single_type);
        sql.push(&format!(" AS k{index}"));
    }
    query.push_source(&mut sql, grant);
    if let Some(cursor) = &query.cursor {
        if cursor.keys.len() == keys.len() {
            // (k0 > v0) OR (k0 = v0 AND k1 > v1) OR …, with the comparison flipped for
            // descending keys and for a backwards page.
            sql.push(" AND (");
            for position in 0..keys.len() {
                if position > 0 {
                    sql.push(" OR ");
                }
                sql.push("(");
                for (index, (key, descending)) in keys.iter().enumerate().take(position + 1) {
                    if index > 0 {
                        sql.push(" AND ");
                    }
                    sort_expression(&mut sql, alias, key, &source, single_type);
                    let after = *descending == backwards;
                    let operator = if index < position { " = " } else if after { " > " } else { " < " };
                    match cursor.keys.get(index) {
                        Some(value) => {
                            sql.push(operator).bind_key(value);
                        }
                        // A cursor with fewer keys than the sort matches nothing after it.
                        None => {
                            sql.push(" IS NULL AND 1 = 0");
                        }
                    }
                }
                sql.push(")");
            }
            sql.push(")");
        }
    }
    order(&mut sql, "");
    sql.push(" LIMIT ").bind_i64(query.limit + 1);
    sql.push(") page JOIN ");
    sql.push(if connection_is_sqlite { "resources cur INDEXED BY sqlite_autoindex_resources_1" } else { "resources cur" });
    sql.push(" ON cur.resource_type = page.resource_type AND cur.id = page.id");
    order(&mut sql, "page.");
    sql
}

/// The database's query plan for a search page, as text lines (for benchmark notes).
pub async fn explain(connection: &mut Db, backend: super::Backend, grant: &Grant, query: &SearchQuery) -> Result<Vec<String>> {
    let sql = search_sql(grant, query, backend == super::Backend::Sqlite);
    let prefix = match backend {
        super::Backend::Sqlite => "EXPLAIN QUERY PLAN ",
        super::Backend::Postgres => "EXPLAIN ",
    };
    let explained = Sql {
        text: format!("{prefix}{}", sql.text()),
        arguments: sql.arguments.clone(),
        aliases: 0,
        placeholders: sql.placeholders.iter().map(|(start, length)| (start + prefix.len(), *length)).collect(),
        custom_plan: true,
    };
    let rows = explained.fetch_all(connection).await?;
    let column = match backend {
        super::Backend::Sqlite => "detail",
        super::Backend::Postgres => "QUERY PLAN",
    };
    rows.iter().map(|row| Ok(row.try_get::<String, _>(column)?)).collect()
}

/// One page of matching current resources, in sort order, after (or before) the cursor.
pub async fn search(connection: &mut Db, grant: &Grant, query: &SearchQuery) -> Result<Page> {
    let keys = query.keys();
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    let mut sql = search_sql(grant, query, connection.0.backend_name() == "SQLite");
    if query.plans_for_values() {
        sql.planned_for_its_values();
    }
    let rows = sql.fetch_all(connection).await?;
    let more = rows.len() as i64 > query.limit;
    let mut found: Vec<(CurrentRow, Vec<KeyValue>)> = Vec::with_capacity(rows.len());
    for row in rows.iter().take(query.limit.max(0) as usize) {
        let mut values = Vec::with_capacity(keys.len());
        for (index, (key, _)) in keys.iter().enumerate() {
            let column = format!("k{index}");
            let numeric = matches!(key, SortKey::Index { table, .. } if table.sort_column().1);
            values.push(if numeric {
                KeyValue::Number(row.try_get::<f64, _>(column.as_str())?)
            } else {
                KeyValue::Text(row.try_get::<String, _>(column.as_str())?)
            });
        }
        found.push((current_from_row(row)?, values));
    }
    if backwards {
        found.reverse();
    }
    let first_keys = found.first().map(|(_, keys)| keys.clone());
    let last_keys = found.last().map(|(_, keys)| keys.clone());
    let matched = found.len();
    let rows = found.into_iter().map(|(row, _)| row).collect();
    Ok(Page { rows, first_keys, last_keys, more, matched })
}

/// How many current resources match (cursor and limit ignored).
pub async fn count(connection: &mut Db, grant: &Grant, query: &SearchQuery) -> Result<i64> {
    // Over index rows (several per resource), the distinct ids are counted through a
    // subquery: PostgreSQL then hashes them instead of sorting them (4 ms instead of 8 ms
    // for the 15,000 rows of a common kana family name).
    // (A board row is one per item: counted directly.)
    let distinct = matches!(query.source(), Source::Index { .. });
    let mut sql = if distinct { Sql::new("SELECT COUNT(*) AS n FROM (SELECT DISTINCT d.id") } else { Sql::new("SELECT COUNT(*) AS n") };
    query.push_source(&mut sql, grant);
    if distinct {
        sql.push(") distinct_ids");
    }
    if query.plans_for_values() {
        sql.planned_for_its_values();
    }
    let rows = sql.fetch_all(connection).await?;
    Ok(rows.first().map(|row| row.try_get::<i64, _>("n")).transpose()?.unwrap_or(0))
}

/// Resources that the `source_type` resources `source_ids` refer to through `param`
/// (to `target_type` if given), within the grant: `_include`.
pub async fn referenced(
    connection: &mut Db,
    grant: &Grant,
    source_type: &str,
    source_ids: &[String],
    param: Option<&str>,
    target_type: Option<&str>,
) -> Result<Vec<CurrentRow>> {
    if source_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(
        "SELECT r.resource_type, r.id, r.tenant, r.version_id, r.last_updated, r.deleted, r.content FROM resources r WHERE r.deleted = 0 AND ",
    );
    sql.tenant_scope("r.tenant", grant);
    sql.push(" AND ");
    let target_types = target_type.map(|t| vec![t.to_owned()]);
    sql.access_scope("r", grant, target_types.as_deref());
    let references = index_source(IndexTable::Reference, source_type);
    sql.push(&format!(" AND (r.resource_type, r.id) IN (SELECT x.target_type, x.target_id FROM {references} x WHERE x.resource_type = "))
        .bind(source_type.to_owned());
    if let Some(param) = param {
        sql.push(" AND x.param = ").bind(param.to_owned());
    }
    if let Some(target_type) = target_type {
        sql.push(" AND x.target_type = ").bind(target_type.to_owned());
    }
    push_in(&mut sql, "x.id", source_ids);
    sql.push(") ORDER BY r.resource_type, r.id");
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(current_from_row).collect()
}

/// `source_type` resources that refer through `param` to the `target_type` resources
/// `target_ids`, within the grant: `_revinclude`.
pub async fn referring(
    connection: &mut Db,
    grant: &Grant,
    source_type: &str,
    param: Option<&str>,
    target_type: &str,
    target_ids: &[String],
) -> Result<Vec<CurrentRow>> {
    if target_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(
        "SELECT r.resource_type, r.id, r.tenant, r.version_id, r.last_updated, r.deleted, r.content FROM resources r WHERE r.deleted = 0 AND ",
    );
    sql.tenant_scope("r.tenant", grant);
    sql.push(" AND ");
    if source_type == "*" {
        // `_revinclude=*`: whatever refers to the matches, of any type the grant shows.
        sql.access_scope("r", grant, None);
        sql.push(" AND EXISTS (SELECT 1 FROM search_reference x WHERE x.resource_type = r.resource_type AND x.id = r.id AND x.target_type = ")
            .bind(target_type.to_owned());
    } else {
        sql.access_scope("r", grant, Some(&[source_type.to_owned()]));
        sql.push(" AND r.resource_type = ").bind(source_type.to_owned());
        let references = index_source(IndexTable::Reference, source_type);
        sql.push(&format!(" AND r.id IN (SELECT x.id FROM {references} x WHERE x.resource_type = "))
            .bind(source_type.to_owned())
            .push(" AND x.target_type = ")
            .bind(target_type.to_owned());
    }
    if let Some(param) = param {
        sql.push(" AND x.param = ").bind(param.to_owned());
    }
    push_in(&mut sql, "x.target_id", target_ids);
    sql.push(") ORDER BY r.resource_type, r.id");
    let rows = sql.fetch_all(connection).await?;
    rows.iter().map(current_from_row).collect()
}

fn push_in(sql: &mut Sql, column: &str, values: &[String]) {
    sql.push(&format!(" AND {column} IN ("));
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            sql.push(", ");
        }
        sql.bind(value.clone());
    }
    sql.push(")");
}

/// A value for [`insert_many`].
#[derive(Debug, Clone, PartialEq)]
pub enum BulkValue {
    Text(String),
    Integer(i64),
    Real(f64),
}

/// Which of `persons` (Patient ids) `reach` reaches now, judged by the same SQL as every
/// query's access predicate (for a write's check of the persons its content names).
pub(crate) async fn reached(connection: &mut Db, reach: &crate::policy::Reach, now: &str, persons: &[String]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for chunk in persons.chunks(100) {
        let mut sql = Sql::new("SELECT q.id FROM resources q WHERE q.resource_type = 'Patient' AND q.id IN (");
        sql.bind_list(chunk);
        sql.push(" AND ");
        sql.push_persons("q.id", &Persons::Reached(reach.clone()), now);
        for row in sql.fetch_all(connection).await? {
            found.push(row.try_get("id")?);
        }
    }
    Ok(found)
}

/// `INSERT INTO {target} VALUES (…), (…), …` in chunks of about a thousand parameters:
/// far fewer round trips than one row per statement, and small enough that SQLite's
/// parameter-name lookup (linear in the number of parameters) stays cheap.
pub(crate) async fn insert_many(connection: &mut Db, target: &str, rows: Vec<Vec<BulkValue>>) -> Result<()> {
    let mut statements = Statements::default();
    statements.insert_many(target, rows);
    statements.execute(connection).await
}

/// Statements that run one after another in one transaction, sent together: on SQLite as one
/// text, so that they cost one round trip to the connection's thread instead of one each
/// (the audit recorder's batch was ten, and every read waits for that batch); PostgreSQL's
/// extended protocol takes one statement a text, so there they run one by one.
#[derive(Default)]
pub(crate) struct Statements {
    list: Vec<Sql>,
}

impl Statements {
    pub(crate) fn push(&mut self, statement: Sql) {
        self.list.push(statement);
    }

    /// Multi-row `INSERT INTO {target} VALUES …` statements for `rows` (each the same width),
    /// of at most 1,000 values each.
    pub(crate) fn insert_many(&mut self, target: &str, rows: Vec<Vec<BulkValue>>) {
        self.insert_many_then(target, rows, "");
    }

    /// Appends `other`'s statements after these.
    pub(crate) fn extend(&mut self, other: Statements) {
        self.list.extend(other.list);
    }

    /// [`Statements::insert_many`], leaving out the rows whose key is already there.
    pub(crate) fn insert_many_or_ignore(&mut self, target: &str, rows: Vec<Vec<BulkValue>>) {
        self.insert_many_then(target, rows, " ON CONFLICT DO NOTHING");
    }

    /// The rows' values move into the statements' arguments (an event's JSON is not copied).
    fn insert_many_then(&mut self, target: &str, rows: Vec<Vec<BulkValue>>, then: &str) {
        let Some(width) = rows.first().map(Vec::len) else { return };
        let per_statement = (1_000 / width.max(1)).max(1);
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut sql = Sql::new(&format!("INSERT INTO {target} VALUES "));
            for (row_index, row) in rows.by_ref().take(per_statement).enumerate() {
                sql.push(if row_index == 0 { "(" } else { ", (" });
                for (index, value) in row.into_iter().enumerate() {
                    if index > 0 {
                        sql.push(", ");
                    }
                    match value {
                        BulkValue::Text(text) => sql.bind(text),
                        BulkValue::Integer(number) => sql.bind_i64(number),
                        BulkValue::Real(number) => sql.bind_f64(number),
                    };
                }
                sql.push(")");
            }
            sql.push(then);
            self.list.push(sql);
        }
    }

    pub(crate) async fn execute(self, connection: &mut Db) -> Result<()> {
        if connection.0.backend_name() != "SQLite" {
            for statement in &self.list {
                statement.execute(connection).await?;
            }
            return Ok(());
        }
        let mut together = Sql::new("");
        for statement in self.list {
            // SQLite's text has anonymous `?` placeholders, bound in the order they appear
            // across the statements: the arguments follow in that order.
            let offset = together.text.len();
            together.text.push_str(&statement.text);
            together.text.push_str(";\n");
            together.placeholders.extend(statement.placeholders.iter().map(|(start, length)| (start + offset, *length)));
            together.arguments.extend(statement.arguments);
        }
        if together.text.is_empty() {
            return Ok(());
        }
        together.execute(connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Interaction;

    /// A person's board read newest first walks the board's own index; anything that
    /// could match a Communication without a board row does not.
    #[test]
    fn a_board_page_is_read_from_the_board_index() {
        let kind = |code: &str| Match::Token { system: Some(crate::fhir::board::KIND_SYSTEM.to_owned()), code: Some(code.to_owned()) };
        let category = |matches: Vec<Match>| Criterion::Index { table: IndexTable::Token, param: "category".into(), matches, negate: false };
        let subject = |target_type: Option<&str>| Criterion::Index {
            table: IndexTable::Reference,
            param: "subject".into(),
            matches: vec![Match::Reference { target_type: target_type.map(str::to_owned), target_id: "p1".into() }],
            negate: false,
        };
        let sent = SortKey::Index { table: IndexTable::Date, param: "sent".into() };
        let query = |criteria: Vec<Criterion>, sort: Vec<(SortKey, bool)>| SearchQuery {
            resource_types: vec!["Communication".into()],
            criteria,
            sort,
            cursor: None,
            limit: 20,
        };
        let board = |q: &SearchQuery| match q.source() {
            Source::Board { patient, .. } => Some(patient.to_owned()),
            _ => None,
        };
        let page = query(vec![subject(Some("Patient")), category(vec![kind("board")])], vec![(sent.clone(), true)]);
        assert_eq!(board(&page), Some("p1".to_owned()));
        assert_eq!(board(&query(vec![category(vec![kind("board"), kind("chat")]), subject(Some("Patient"))], vec![(sent.clone(), false)])), Some("p1".to_owned()));
        // Not only board kinds, no category, a subject that may be a Group, another order.
        let other = Match::Token { system: Some("http://example.org/other".into()), code: Some("board".into()) };
        assert_eq!(board(&query(vec![subject(Some("Patient")), category(vec![kind("board"), other])], vec![(sent.clone(), true)])), None);
        assert_eq!(board(&query(vec![subject(Some("Patient"))], vec![(sent.clone(), true)])), None);
        assert_eq!(board(&query(vec![subject(None), category(vec![kind("board")])], vec![(sent.clone(), true)])), None);
        assert_eq!(board(&query(vec![subject(Some("Patient")), category(vec![kind("board")])], vec![(SortKey::LastUpdated, true)])), None);
        let negated = Criterion::Index { table: IndexTable::Token, param: "category".into(), matches: vec![kind("chat")], negate: true };
        assert_eq!(board(&query(vec![subject(Some("Patient")), negated], vec![(sent.clone(), true)])), None);
        // The page sorts on the row's own `sent`, without DISTINCT.
        let grant = Grant::with_clauses_for_tests(Interaction::Search, vec![]);
        let text = search_sql(&grant, &page, true).text().to_owned();
        // Only the criterion naming the person is what the row is; another person's is kept.
        let mut two = page.clone();
        two.criteria.push(Criterion::Index {
            table: IndexTable::Reference,
            param: "patient".into(),
            matches: vec![Match::Reference { target_type: Some("Patient".into()), target_id: "p2".into() }],
            negate: false,
        });
        let tests_of = |q: &SearchQuery| search_sql(&grant, q, true).text().matches("FROM search_reference x").count();
        assert_eq!((tests_of(&page), tests_of(&two)), (0, 1));
        assert!(text.contains(" FROM (SELECT d.resource_type AS resource_type, d.id AS id, d.sent AS k0, d.id AS k1 FROM board_items d WHERE d.patient = $1"), "{text}");
        // The person is judged through the clauses covering Communications by `subject`
        // only, as a bound value (once); no such clause reaches nobody.
        let persons = |params: &[&str]| Clause::Persons {
            persons: Persons::Listed(vec!["p1".to_owned()]),
            params_by_type: vec![("Communication".to_owned(), params.iter().map(|p| (*p).to_owned()).collect())],
            include_patient: false,
        };
        let reaches = |clauses: Vec<Clause>, person: Person<'_>| {
            let grant = Grant::with_clauses_for_tests(Interaction::Search, clauses);
            let mut sql = Sql::new("");
            sql.reaches_through(person, &grant, "Communication", "subject");
            sql.text().to_owned()
        };
        assert_eq!(reaches(vec![persons(&["subject", "recipient"])], Person::Id("p1")), "EXISTS (SELECT 1 FROM (SELECT $1 AS patient) pp1 WHERE pp1.patient IN ($2))");
        assert_eq!(reaches(vec![persons(&["subject"])], Person::Column("b.patient")), "(b.patient IN ($1))");
        let team = team_of_r1(("Communication", &["subject"]), false);
        let gathered = reaches(vec![team], Person::Column("b.patient"));
        assert!(gathered.starts_with("(b.patient IN (SELECT c1.patient FROM access_links c1 WHERE c1.kind = 'team' AND c1.member IN ($1) AND (EXISTS"), "{gathered}");
        assert_eq!(reaches(vec![persons(&["recipient"])], Person::Id("p1")), "1 = 0");
        assert_eq!(reaches(vec![], Person::Id("p1")), "1 = 0");
    }

    /// The person clause of PractitionerRole/r1's teams in `ina`, covering `(type, params)`.
    fn team_of_r1((resource_type, params): (&str, &[&str]), include_patient: bool) -> Clause {
        Clause::Persons {
            persons: Persons::Reached(crate::policy::Reach {
                level: ReachLevel::Team,
                members: vec!["PractitionerRole/r1".to_owned()],
                organization: "o1".to_owned(),
                tenants: vec!["ina".to_owned()],
                only: None,
            }),
            params_by_type: vec![(resource_type.to_owned(), params.iter().map(|p| (*p).to_owned()).collect())],
            include_patient,
        }
    }

    /// A page is one statement: the matches' keys are sorted and limited in a subquery, its
    /// rows joined by primary key afterwards, and the access predicate is judged once — on the
    /// rows of the statement's own snapshot, the ones it returns.
    #[test]
    fn a_page_is_judged_once_in_one_statement() {
        let family = Criterion::Index {
            table: IndexTable::String,
            param: "family".into(),
            matches: vec![Match::StringRange { low: "yamada".into(), high: "yamadb".into() }],
            negate: false,
        };
        let query = SearchQuery { resource_types: vec!["Patient".into()], criteria: vec![family], sort: vec![], cursor: None, limit: 20 };
        let grant = Grant::with_clauses_for_tests(Interaction::Search, vec![team_of_r1(("Patient", &[]), true)]);
        let sqlite = search_sql(&grant, &query, true);
        let text = sqlite.text();
        assert_eq!(text.matches("kind = 'team'").count(), 1, "{text}");
        let (keys, page) = text.split_once(") page JOIN ").unwrap_or_default();
        assert!(keys.starts_with("SELECT cur.resource_type AS resource_type") && keys.contains(" FROM (SELECT DISTINCT d.resource_type"), "{text}");
        assert!(keys.contains(" ORDER BY k0 ASC LIMIT $"), "{text}");
        assert_eq!(page, "resources cur INDEXED BY sqlite_autoindex_resources_1 ON cur.resource_type = page.resource_type AND cur.id = page.id ORDER BY page.k0 ASC");
        let postgres = search_sql(&grant, &query, false);
        assert!(postgres.text().ends_with(") page JOIN resources cur ON cur.resource_type = page.resource_type AND cur.id = page.id ORDER BY page.k0 ASC"));
    }

    /// The access predicate as data: (clauses, the query's types, rows judged, the SQL and
    /// the number of values bound). No database: the text is what both backends run.
    #[test]
    fn grants_render_as_one_predicate() {
        let tenants = |types: &[&str]| Clause::Tenants {
            types: TypeSet::Only(types.iter().map(|t| (*t).to_owned()).collect()),
            tenants: vec!["ina".to_owned(), "minamiminowa".to_owned()],
        };
        let persons = Clause::Persons {
            persons: Persons::Listed(vec!["p1".to_owned(), "p2".to_owned()]),
            params_by_type: vec![("Observation".to_owned(), vec!["subject".to_owned(), "performer".to_owned()])],
            include_patient: true,
        };
        let check = |clauses: Vec<Clause>, types: Option<&[String]>, rows: Rows, expected: &str, bound: usize| {
            let grant = Grant::with_clauses_for_tests(Interaction::Read, clauses);
            let mut sql = Sql::new("");
            match rows {
                Rows::Current => sql.access_scope("r", &grant, types),
                Rows::Versions => sql.access_scope_versions("r", &grant, types),
            };
            assert_eq!(sql.text(), expected);
            assert_eq!(sql.arguments.len(), bound, "{expected}");
        };
        let observation = ["Observation".to_owned()];
        check(vec![], None, Rows::Current, "(1 = 0)", 0);
        check(vec![tenants(&["Organization"])], None, Rows::Current, "((r.tenant IN ($1, $2) AND r.resource_type IN ($3)))", 3);
        // A clause that cannot match the query's types adds nothing.
        check(vec![tenants(&["Organization"])], Some(&observation), Rows::Current, "(1 = 0)", 0);
        check(
            vec![persons.clone()],
            Some(&observation),
            Rows::Current,
            "(EXISTS (SELECT 1 FROM search_reference z1 WHERE z1.resource_type = r.resource_type AND z1.id = r.id \
             AND z1.target_type = 'Patient' AND ((z1.resource_type = $1 AND z1.param IN ($2, $3))) AND z1.target_id IN ($4, $5) LIMIT 1 OFFSET 0))",
            5,
        );
        // Versions are judged by their own compartment rows.
        check(
            vec![persons],
            Some(&observation),
            Rows::Versions,
            "(EXISTS (SELECT 1 FROM version_compartment z1 WHERE z1.resource_type = r.resource_type AND z1.id = r.id \
             AND z1.version_id = r.version_id AND ((z1.resource_type = $1 AND z1.param IN ($2, $3))) AND z1.patient IN ($4, $5) LIMIT 1 OFFSET 0))",
            5,
        );
        // A reach binds the actor's references, its Organization, the municipalities and
        // the time: the same ten values for one person reached or a hundred thousand.
        let reach = |level| crate::policy::Reach {
            level,
            members: vec!["PractitionerRole/r1".to_owned(), "Organization/o1".to_owned()],
            organization: "o1".to_owned(),
            tenants: vec!["ina".to_owned()],
            only: None,
        };
        let team = Clause::Persons {
            persons: Persons::Reached(reach(ReachLevel::Team)),
            params_by_type: vec![("Observation".to_owned(), vec!["subject".to_owned()])],
            include_patient: false,
        };
        check(
            vec![team],
            Some(&observation),
            Rows::Current,
            "(EXISTS (SELECT 1 FROM search_reference z1 WHERE z1.resource_type = r.resource_type AND z1.id = r.id \
             AND z1.target_type = 'Patient' AND ((z1.resource_type = $1 AND z1.param IN ($2))) AND \
             (EXISTS (SELECT 1 FROM resources p2 WHERE p2.resource_type = 'Patient' AND p2.id = z1.target_id \
             AND p2.deleted = 0 AND p2.tenant IN ($3)) \
             AND EXISTS (SELECT 1 FROM access_links t3 WHERE t3.patient = z1.target_id AND t3.kind = 'team' \
             AND t3.member IN ($4, $5) AND t3.valid_from <= $6 AND $7 < t3.valid_to) \
             AND (EXISTS (SELECT 1 FROM access_links c4 WHERE c4.patient = z1.target_id AND c4.kind = 'consent' \
             AND c4.member = '' AND c4.valid_from <= $8 AND $9 < c4.valid_to) \
             OR EXISTS (SELECT 1 FROM access_links g5 WHERE g5.patient = z1.target_id AND g5.kind = 'registration' \
             AND g5.member = $10))) LIMIT 1 OFFSET 0))",
            10,
        );
        let registered = Clause::Persons {
            persons: Persons::Reached(reach(ReachLevel::Registration)),
            params_by_type: Vec::new(),
            include_patient: true,
        };
        check(
            vec![registered],
            None,
            Rows::Current,
            "((r.resource_type = 'Patient' AND (EXISTS (SELECT 1 FROM access_links g1 WHERE g1.patient = r.id \
             AND g1.kind = 'registration' AND g1.member = $1) AND EXISTS (SELECT 1 FROM resources p2 \
             WHERE p2.resource_type = 'Patient' AND p2.id = r.id AND p2.tenant IN ($2)))))",
            2,
        );
    }
}
