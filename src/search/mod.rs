//! The search model, below the policy and the store: the search parameters a resource type
//! has and the index rows they extract ([`registry`]), the rows themselves ([`index`]), and
//! the criteria a query becomes ([`criteria`]) and the parser of URL parameters into them
//! ([`parse`]). No SQL and no access rule here.

pub mod criteria;
pub mod index;
pub mod parse;
pub mod registry;

pub use criteria::{Criterion, Cursor, DatePrefix, IndexTable, KeyValue, Match, NumberPrefix, SearchQuery, SortKey};
pub use index::{IndexEntry, LINK_CONSENT, LINK_REGISTRATION, LINK_TEAM};
pub use registry::{ParamType, Registry};
