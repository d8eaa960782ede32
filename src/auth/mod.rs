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
//! [`crate::policy::Principal`] only through [`tokens::verify`]; nothing else makes an
//! authenticated principal from a request.

pub mod assertion;
pub mod clients;
pub mod keys;
pub mod launch;
pub mod scopes;
pub mod server;
pub mod tokens;
pub mod upstream;

/// An OAuth 2.0 error response (RFC 6749 §5.2): the token, introspection and revocation
/// endpoints answer in OAuth's format, not with OperationOutcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { error, description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new("invalid_client", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new("invalid_scope", description)
    }

    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new("unauthorized_client", description)
    }

    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new("unsupported_grant_type", description)
    }

    /// A failure inside the server; the detail goes to the log only.
    pub fn server_error(detail: impl std::fmt::Display) -> Self {
        tracing::error!(target: "renraku::auth", %detail, "authorization server error");
        Self::new("server_error", "the authorization server failed; try again later")
    }

    /// 401 for a client that failed to authenticate, 500 for our own failures, else 400.
    pub fn status(&self) -> u16 {
        match self.error {
            "invalid_client" => 401,
            "server_error" => 500,
            _ => 400,
        }
    }
}

impl From<crate::error::Error> for OAuthError {
    fn from(error: crate::error::Error) -> Self {
        OAuthError::server_error(error)
    }
}
