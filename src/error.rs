//! The domain error and its one mapping to an HTTP status and a FHIR OperationOutcome.
//!
//! Every failure anywhere in the gateway becomes an [`Error`]; the HTTP layer turns it into
//! a response with [`Error::status`] and [`Error::to_outcome`]. The mapping is an exhaustive
//! `match` with no catch-all arm, so a new variant forces its author to choose a status.
//! Internal failures never show their detail to the client: the detail is logged together
//! with the request id, and the client sees only that id.

use axum::http::StatusCode;

use crate::outcome::{Issue, IssueCode, OperationOutcome};

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (syntax, parameters, headers).
    #[error("invalid request: {}", .0.diagnostics)]
    BadRequest(Issue),
    /// The content parsed but breaks the rules of FHIR or of a profile.
    #[error("unprocessable content ({} issues)", .0.len())]
    Unprocessable(Vec<Issue>),
    /// No valid credentials: no token, or one that is expired, revoked, malformed or meant
    /// for another tenant. Answered with `WWW-Authenticate: Bearer`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credentials are valid but their scopes do not cover the request. Used only where
    /// the answer reveals nothing about stored data (a resource type, never one resource).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such resource (or the caller may not know that it exists).
    #[error("not found: {0}")]
    NotFound(String),
    /// The resource existed and was deleted.
    #[error("gone: {0}")]
    Gone(String),
    /// The request conflicts with the current state (e.g. an id already used elsewhere).
    #[error("conflict: {0}")]
    Conflict(String),
    /// `If-Match`, or a conditional interaction matching more than one resource.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The target can never be changed through any API (the audit trail).
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The body's media type is not one this server reads.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Content of a kind the server does not store (a Binary's media type outside the
    /// allow-list, bytes that are not what they claim, a program).
    #[error("unsupported content: {0}")]
    UnsupportedContent(String),
    /// A `Range` that lies outside the content (`size` bytes).
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The client accepts no format this server writes.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The body is larger than the configured limit.
    #[error("payload too large")]
    PayloadTooLarge { limit_bytes: usize },
    /// The request asks more than a configured limit allows (`[limits]` in the
    /// configuration): `limit` is the setting's name, `allowed` its value.
    #[error("limit {limit} exceeded: {what}")]
    LimitExceeded { limit: &'static str, allowed: u64, what: String },
    /// The database refused or cancelled a statement for its cost (`statement_timeout_ms`
    /// on PostgreSQL, expression or variable bounds on SQLite).
    #[error("too costly: {0}")]
    TooCostly(String),
    /// The request's path and query are longer than `limits.url_bytes`.
    #[error("the URL is too long: {length} bytes")]
    UrlTooLong { length: usize, allowed: usize },
    /// The request took longer than `limits.request_timeout_ms` and was abandoned.
    #[error("request timed out")]
    Timeout { allowed_ms: u64 },
    /// An interaction the server does not implement for this target.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A service the gateway depends on (a municipality's identity provider) failed.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// Something broke inside the server. The message is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A 400 with a message and, where one applies, the element or parameter it concerns.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest(Issue::error(IssueCode::Invalid, message))
    }

    /// A 400 naming the element or parameter at fault.
    pub fn bad_request_at(message: impl Into<String>, expression: impl Into<String>) -> Self {
        Error::BadRequest(Issue::error(IssueCode::Invalid, message).at(expression))
    }

    /// A 422 with a single issue.
    pub fn unprocessable(issue: Issue) -> Self {
        Error::Unprocessable(vec![issue])
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Gone(_) => StatusCode::GONE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::MethodNotAllowed | Error::ReadOnly(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::UnsupportedMediaType(_) | Error::UnsupportedContent(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
            Error::TooCostly(_) => StatusCode::BAD_REQUEST,
            Error::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::UrlTooLong { .. } => StatusCode::URI_TOO_LONG,
            Error::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OperationOutcome the client sees. `request_id` is quoted in internal errors so
    /// that an operator can find the logged detail.
    pub fn to_outcome(&self, request_id: &str) -> OperationOutcome {
        let issues = match self {
            Error::BadRequest(issue) => vec![issue.clone()],
            Error::Unprocessable(issues) => issues.clone(),
            Error::Unauthorized(message) => vec![Issue::error(IssueCode::Login, message.clone())],
            Error::Forbidden(message) => vec![Issue::error(IssueCode::Forbidden, message.clone())],
            Error::NotFound(what) => vec![Issue::error(IssueCode::NotFound, format!("{what} is not known"))],
            Error::Gone(what) => vec![Issue::error(IssueCode::Deleted, format!("{what} has been deleted"))],
            Error::Conflict(message) => vec![Issue::error(IssueCode::Conflict, message.clone())],
            Error::PreconditionFailed(message) => vec![Issue::error(IssueCode::Conflict, message.clone())],
            Error::MethodNotAllowed => vec![Issue::error(
                IssueCode::NotSupported,
                "this HTTP method is not allowed on this path",
            )],
            Error::ReadOnly(message) => vec![Issue::error(IssueCode::NotSupported, message.clone())],
            Error::UnsupportedMediaType(media_type) => vec![Issue::error(
                IssueCode::NotSupported,
                format!(
                    "the media type '{media_type}' is not supported; send application/fhir+json or application/fhir+xml"
                ),
            )],
            Error::UnsupportedContent(message) => vec![Issue::error(IssueCode::NotSupported, message.clone())],
            Error::RangeNotSatisfiable { size } => vec![Issue::error(
                IssueCode::Value,
                format!("the requested range lies outside the content, which is {size} bytes long"),
            )],
            Error::NotAcceptable(accept) => vec![Issue::error(
                IssueCode::NotSupported,
                format!("none of the accepted formats '{accept}' can be produced; use application/fhir+json or application/fhir+xml"),
            )],
            Error::PayloadTooLarge { limit_bytes } => vec![Issue::error(
                IssueCode::TooLong,
                format!("the request body is larger than the limit of {limit_bytes} bytes"),
            )],
            Error::LimitExceeded { limit, allowed, what } => vec![Issue::error(
                IssueCode::TooCostly,
                format!("{what}: more than the server's limit {limit} = {allowed} allows"),
            )],
            Error::TooCostly(message) => vec![Issue::error(IssueCode::TooCostly, message.clone())],
            Error::UrlTooLong { length, allowed } => vec![Issue::error(
                IssueCode::TooCostly,
                format!("the URL's path and query are {length} bytes: more than the server's limit url_bytes = {allowed} allows"),
            )],
            Error::Timeout { allowed_ms } => vec![Issue::error(
                IssueCode::Transient,
                format!("the request took longer than the server's limit request_timeout_ms = {allowed_ms} and was abandoned"),
            )],
            Error::NotSupported(message) => vec![Issue::error(IssueCode::NotSupported, message.clone())],
            Error::BadGateway(message) => vec![Issue::error(IssueCode::Transient, message.clone())],
            Error::Internal(_) => vec![Issue::fatal(
                IssueCode::Exception,
                format!("an internal error occurred; quote request id {request_id} to the operator"),
            )],
        };
        OperationOutcome::new(issues).with_request_id(request_id)
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        // A statement the database gave up on for its cost is the request's fault, not the
        // server's: PostgreSQL's statement timeout (57014 query_canceled) and SQLite's
        // bounds on expression depth and bound variables.
        if let sqlx::Error::Database(database) = &error {
            let message = database.message();
            let canceled = database.code().as_deref() == Some("57014");
            // PostgreSQL text cannot hold a NUL character (22021): the request carried one
            // (an id, a search value); SQLite stores it, and it matches nothing.
            if database.code().as_deref() == Some("22021") {
                return Error::bad_request("the request contains a NUL character, which no FHIR id or string may hold");
            }
            if canceled || message.contains("Expression tree is too large") || message.contains("too many SQL variables") {
                tracing::info!(%error, "statement refused for its cost");
                return Error::TooCostly("the request would take the database longer than the server allows; narrow it".into());
            }
        }
        Error::Internal(format!("database: {error}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::Internal(format!("json: {error}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
