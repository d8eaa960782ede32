//! Authentication: access tokens and SMART scopes.
//!
//! Today the gateway verifies the access tokens it issued ([`tokens`]) and parses SMART
//! scopes ([`scopes`]); the SMART authorization server (discovery, client registry, backend
//! services, app launch, upstream OpenID Connect login) builds on these.
//!
//! Architecture invariant: the HTTP layer turns a request's `Authorization` header into a
//! [`crate::policy::Principal`] only through [`tokens::verify`]; nothing else makes an
//! authenticated principal from a request.

pub mod scopes;
pub mod tokens;
