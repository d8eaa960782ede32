//! What a search asks for, as data: the criteria a parsed query becomes, its sort keys,
//! its paging cursor. The service's parser produces them, the policy compiles granular
//! scopes into them, and the store renders them as SQL.

/// The index tables, one per search parameter type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTable {
    String,
    Token,
    Reference,
    Date,
    Number,
    Uri,
}

impl IndexTable {
    pub fn name(self) -> &'static str {
        match self {
            IndexTable::String => "search_string",
            IndexTable::Token => "search_token",
            IndexTable::Reference => "search_reference",
            IndexTable::Date => "search_date",
            IndexTable::Number => "search_number",
            IndexTable::Uri => "search_uri",
        }
    }

    /// The column a sort on this table orders by, and whether it is numeric.
    pub fn sort_column(self) -> (&'static str, bool) {
        match self {
            IndexTable::String => ("normalized", false),
            IndexTable::Token => ("code", false),
            IndexTable::Reference => ("target_id", false),
            IndexTable::Date => ("low", false),
            IndexTable::Number => ("value", true),
            IndexTable::Uri => ("uri", false),
        }
    }
}

/// How a date search value relates to the indexed range `[low, high)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// How a number search value relates to the indexed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberPrefix {
    /// Within `[low, high)` (the precision of the search value).
    Within,
    Outside,
    Gt,
    Lt,
    Ge,
    Le,
}

/// One alternative of a criterion (alternatives are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// Normalized value starts with the text: `normalized >= low AND normalized < high`.
    StringRange { low: String, high: String },
    StringExact(String),
    StringContains(String),
    Token { system: Option<String>, code: Option<String> },
    TokenText(String),
    Reference { target_type: Option<String>, target_id: String },
    ReferenceUrl(String),
    ReferenceIdentifier { system: Option<String>, value: String },
    Date { prefix: DatePrefix, low: String, high: String },
    Number { prefix: NumberPrefix, low: f64, high: f64, system: Option<String>, code: Option<String> },
    UriEquals(String),
    UriBelow(String),
    UriAbove(Vec<String>),
}

/// One condition of a search; all criteria must hold (AND).
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// `_id=a,b`
    Id(Vec<String>),
    /// `_lastUpdated`: half-open intervals `[low, high)` over stored timestamps, ORed.
    LastUpdated(Vec<(Option<String>, Option<String>)>),
    /// Some index row of `param` matches one of `matches`; with `negate`, none does.
    Index { table: IndexTable, param: String, matches: Vec<Match>, negate: bool },
    /// `:missing=true` (no index row for `param`) or `false` (at least one).
    Missing { table: IndexTable, param: String, missing: bool },
    /// A reference through `param` (to `target_type`, if given) whose target satisfies
    /// every criterion of `criteria`.
    Chain { param: String, target_type: Option<String>, criteria: Vec<Criterion> },
    /// Some `source_type` resource refers to this one through `param` and satisfies `criteria`.
    Has { source_type: String, param: String, criteria: Vec<Criterion> },
    /// In the compartment of `target_type/target_id` through any of `params`.
    Compartment { params: Vec<String>, target_type: String, target_id: String },
    /// The Patient itself, or a resource in its compartment through the parameters given
    /// for its type (`Patient/[id]/$everything`).
    Everything { patient_id: String, params_by_type: Vec<(String, Vec<String>)> },
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Index { table: IndexTable, param: String },
}

/// A value of a sort key, kept in a paging cursor. Serialised as a tagged string (`n…` or
/// `t…`): with serde_json's arbitrary-precision numbers (which fhirbolt enables), untagged
/// enums cannot read numbers back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum KeyValue {
    Number(f64),
    Text(String),
}

impl From<KeyValue> for String {
    fn from(value: KeyValue) -> String {
        match value {
            KeyValue::Number(number) => format!("n{number}"),
            KeyValue::Text(text) => format!("t{text}"),
        }
    }
}

impl TryFrom<String> for KeyValue {
    type Error = String;

    fn try_from(text: String) -> Result<KeyValue, String> {
        match text.split_at_checked(1) {
            Some(("n", number)) => number.parse().map(KeyValue::Number).map_err(|_| "bad number".to_owned()),
            Some(("t", rest)) => Ok(KeyValue::Text(rest.to_owned())),
            _ => Err("bad key".to_owned()),
        }
    }
}

/// A keyset cursor: the sort key values (and id) of the row before (or after) the page.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// `true` for a `previous` page (rows before the key).
    #[serde(rename = "b", default)]
    pub backwards: bool,
    #[serde(rename = "k")]
    pub keys: Vec<KeyValue>,
}

/// A search over the current versions of one resource type.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// One type for a type-level search; several (or every type) for system search and
    /// `$everything`.
    pub resource_types: Vec<String>,
    pub criteria: Vec<Criterion>,
    /// `(key, descending)`; the id is always the final tie-breaker (ascending).
    pub sort: Vec<(SortKey, bool)>,
    pub cursor: Option<Cursor>,
    pub limit: i64,
}
