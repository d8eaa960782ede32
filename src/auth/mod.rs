//! Authentication: access tokens and SMART scopes.
//!
//! - [`tokens`]: the access tokens the gateway issues, and their verification per request.
//! - [`scopes`]: SMART scopes in a typed form.
//! - [`clients`]: the registry of OAuth clients per municipality.
//! - [`assertion`]: client assertions (signed JWTs) of backend-services clients.
//! - [`server`]: the SMART authorization server's endpoints without HTTP: discovery, token
//!   (`client_credentials`), introspection, revocation.
//!
//! Architecture invariant: the HTTP layer turns a request's `Authorization` header into a
//! [`crate::identity::Principal`] only through [`tokens::verify`]; nothing else makes an
//! authenticated principal from a request.

pub mod assertion;
pub mod keys;
pub mod launch;
pub mod server;
pub mod tokens;
pub mod upstream;

/// The error codes of OAuth 2.0 (RFC 6749 §5.2) this server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
    ServerError,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::ServerError => "server_error",
        }
    }

    /// 401 for a client that failed to authenticate, 500 for our own failures, else 400.
    /// Exhaustive: a new code must choose its status.
    pub fn status(self) -> u16 {
        match self {
            OAuthErrorCode::InvalidClient => 401,
            OAuthErrorCode::ServerError => 500,
            OAuthErrorCode::InvalidRequest
            | OAuthErrorCode::InvalidGrant
            | OAuthErrorCode::InvalidScope
            | OAuthErrorCode::UnauthorizedClient
            | OAuthErrorCode::UnsupportedGrantType => 400,
        }
    }
}

/// An OAuth 2.0 error response (RFC 6749 §5.2): the token, introspection and revocation
/// endpoints answer in OAuth's format, not with OperationOutcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: String,
}

impl OAuthError {
    fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError { code, description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }

    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidScope, description)
    }

    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::UnauthorizedClient, description)
    }

    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::UnsupportedGrantType, description)
    }

    /// A failure inside the server; the detail goes to the log only.
    pub fn server_error(detail: impl std::fmt::Display) -> Self {
        tracing::error!(target: "renraku::auth", %detail, "authorization server error");
        Self::new(OAuthErrorCode::ServerError, "the authorization server failed; try again later")
    }

    /// The `error` member of the response.
    pub fn error(&self) -> &'static str {
        self.code.as_str()
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

impl From<crate::error::Error> for OAuthError {
    fn from(error: crate::error::Error) -> Self {
        OAuthError::server_error(error)
    }
}
