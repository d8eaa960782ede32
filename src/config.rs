//! Configuration: the only module that reads environment variables and files.
//!
//! Precedence, lowest first: built-in defaults, the TOML configuration file (`--config`),
//! environment variables (`RENRAKU_*`), command-line flags. `clap` merges the last two;
//! [`Config::resolve`] lays them over the file and the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::clients::ClientConfig;

/// Ten mebibytes: big enough for a transaction Bundle of a few hundred resources.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;
/// Five years and a day for each leap year in them: the MHLW guideline's minimum.
pub const DEFAULT_AUDIT_RETENTION_DAYS: i64 = 5 * 365 + 2;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./renraku-data";
/// Longer than `limits.request_timeout_ms`' default would be pointless; orchestrators
/// commonly wait 30 s between SIGTERM and SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 25_000;

/// Fifty mebibytes: a few minutes of phone video.
pub const DEFAULT_BINARY_LIMIT_BYTES: usize = 50 * 1024 * 1024;

/// `[binary]` in the configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BinarySettings {
    /// The largest content a Binary may hold (raw upload or decoded `data`).
    pub limit_bytes: usize,
    /// The media types a Binary may declare (`contentType`, without parameters).
    pub media_types: Vec<String>,
}

impl Default for BinarySettings {
    fn default() -> Self {
        let types = [
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
            "image/heic",
            "image/heif",
            "image/tiff",
            "application/pdf",
            "video/mp4",
            "video/quicktime",
            "audio/mpeg",
            "audio/mp4",
            "audio/x-m4a",
            "audio/wav",
            "text/plain",
        ];
        BinarySettings { limit_bytes: DEFAULT_BINARY_LIMIT_BYTES, media_types: types.iter().map(|t| (*t).to_owned()).collect() }
    }
}

/// `[subscriptions]` in the configuration file: where notifications may go and how failed
/// deliveries are retried.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionSettings {
    /// Hosts a rest-hook endpoint may name with plain `http` (all others need `https`).
    pub http_hosts: Vec<String>,
    /// Hosts a rest-hook endpoint may name although they are, or resolve to, loopback,
    /// private, link-local or otherwise non-public addresses (refused by default: SSRF).
    pub private_hosts: Vec<String>,
    /// How long a receiver has to answer when the subscription does not say (ms).
    pub timeout_ms: u64,
    /// The first retry's delay; each further failure doubles it, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// After this many failures in a row a subscription's status is `error` (it is still
    /// retried at `retry_max_ms`, and is `active` again after a delivery succeeds).
    pub failures_before_error: u32,
    /// How long a websocket binding token lives (never longer than the access token it was
    /// issued to), in seconds.
    pub binding_token_seconds: u64,
    /// How often each gateway looks for work besides being woken by its own writes (ms);
    /// bounds how late a write on another gateway is delivered.
    pub poll_ms: u64,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            http_hosts: Vec::new(),
            private_hosts: Vec::new(),
            timeout_ms: 10_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            failures_before_error: 5,
            binding_token_seconds: 300,
            poll_ms: 250,
        }
    }
}

impl SubscriptionSettings {
    /// The demo's: receivers on this machine (loopback, plain http) are allowed.
    pub fn demo() -> SubscriptionSettings {
        let loopback: Vec<String> = ["127.0.0.1", "localhost", "[::1]"].iter().map(|h| (*h).to_owned()).collect();
        SubscriptionSettings { http_hosts: loopback.clone(), private_hosts: loopback, ..SubscriptionSettings::default() }
    }
}

/// The settings of a running gateway, fully resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// The externally visible origin, e.g. `https://renraku.example.jp`; base URLs are
    /// `{public_base_url}/{tenant}/fhir`.
    pub public_base_url: String,
    pub body_limit_bytes: usize,
    pub tenants: Vec<TenantConfig>,
    /// OAuth clients registered in the configuration file (`[[clients]]`).
    pub clients: Vec<ClientConfig>,
    /// Demo mode seeds demo data on start-up.
    pub demo: bool,
    /// Custom SearchParameter resources (read from `search_parameters_dir`).
    pub extra_search_parameters: Vec<serde_json::Value>,
    /// How long audit events are kept before `renraku audit prune` may export and remove
    /// them, in days.
    pub audit_retention_days: i64,
    /// Turns the audit trail off. Exists only so that the CRUD benchmark can measure what
    /// auditing costs; no file, environment variable or flag sets it, and `resolve` always
    /// leaves it false.
    pub audit_off_for_benchmarks_only: bool,
    /// What one request may ask of the server (`[limits]`).
    pub limits: Limits,
    /// The bearer token `GET /metrics` requires; without one the endpoint is off (404).
    pub metrics_token: Option<String>,
    /// After SIGTERM, how long requests in flight may take to finish before the gateway
    /// stops anyway.
    pub shutdown_grace_ms: u64,
    /// What a `meta.profile` this server does not know does to a write.
    pub unknown_profiles: UnknownProfiles,
    /// What a Binary may hold (`[binary]`): its size limit and the media types allowed.
    pub binary: BinarySettings,
    /// Notifications (`[subscriptions]`).
    pub subscriptions: SubscriptionSettings,
}

/// `unknown_profiles` in the configuration file.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownProfiles {
    /// Accepted, unchecked, with a warning in the OperationOutcome (`Prefer: return=OperationOutcome`).
    #[default]
    Warn,
    /// Refused with a 422 naming the profile.
    Error,
}

/// Bounds on what one request may ask of the server. Each has a safe default; exceeding one
/// answers a 4xx OperationOutcome that names the limit (its `[limits]` key).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Nesting depth of a JSON body (objects and arrays).
    pub json_depth: usize,
    /// Nesting depth of an XML body (elements).
    pub xml_depth: usize,
    /// Search parameters in one search (query or form), including result parameters.
    pub search_parameters: usize,
    /// Comma-separated values of one search parameter.
    pub values_per_parameter: usize,
    /// Links of one chain (`subject.organization.name` is two) and nested `_has`.
    pub chain_depth: usize,
    /// `_include` and `_revinclude` parameters in one search.
    pub includes: usize,
    /// The largest page size (`_count`); larger requests are reduced to it.
    pub max_count: usize,
    /// Entries of one batch or transaction Bundle.
    pub bundle_entries: usize,
    /// How long one SQL statement may run on PostgreSQL before the server cancels it.
    pub statement_timeout_ms: u64,
    /// How long one request may take before it is answered 503 and its work abandoned.
    pub request_timeout_ms: u64,
    /// Bytes of a request's path and query. (Beyond 64 KiB the HTTP parser refuses a request
    /// line with a bare 414 before the gateway sees it.)
    pub url_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // Real resources nest far less (a Questionnaire ten item levels deep is about 25
            // JSON levels, 12 XML levels). The parsers and validators recurse per level; a
            // debug build on a 2 MiB thread stack overflowed at ~45 nested XML extensions.
            json_depth: 64,
            xml_depth: 32,
            search_parameters: 50,
            values_per_parameter: 100,
            chain_depth: 4,
            includes: 10,
            max_count: 1000,
            bundle_entries: 1000,
            statement_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            // Searches that fit every other limit stay far below (50 parameters of 100
            // values of short tokens); servers and proxies commonly stop at 8 to 16 KiB.
            url_bytes: 16_384,
        }
    }
}

/// One municipality served by the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TenantConfig {
    /// URL segment, e.g. `ina` in `/ina/fhir`.
    pub slug: String,
    /// 全国地方公共団体コード, six digits including the check digit, e.g. `202096`.
    pub code: String,
    /// The municipality's name, e.g. `伊那市`.
    pub name: String,
    /// The municipality's OpenID Provider, through which its professionals sign in to apps.
    #[serde(default)]
    pub login: Option<UpstreamLogin>,
}

/// A municipality's OpenID Provider (`[tenants.login]`). Renraku is its relying party.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamLogin {
    /// The provider's issuer URL (its discovery document is read from there).
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The `Practitioner.identifier.system` whose value is the provider's `sub` for that
    /// professional: how a sign-in is mapped to a Practitioner of the directory.
    pub subject_system: String,
    /// Refuse sign-ins that did not use a second factor (by `amr` or `acr`).
    #[serde(default)]
    pub require_mfa: bool,
    /// `acr` values that count as multi-factor, in addition to `amr` values such as `mfa`,
    /// `otp`, `hwk`, `swk`, `sms`, `fpt`, `face`.
    #[serde(default)]
    pub mfa_acr_values: Vec<String>,
    /// Which sign-ins act as the municipality's administrator or auditor (or as the server
    /// administrator), by a claim of the provider's id_token (`[tenants.login.roles]`).
    #[serde(default)]
    pub roles: RoleClaims,
}

/// How the provider's id_token names administrative roles. A sign-in holding one of these
/// values in `claim` may act in that role through an app registered for it (the client's
/// `roles`); administrative roles always need a second factor unless `require_mfa = false`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleClaims {
    /// The claim holding the user's roles or groups: a string or an array of strings; a
    /// dotted path reaches into objects (Keycloak's `realm_access.roles`).
    #[serde(default = "default_role_claim")]
    pub claim: String,
    #[serde(default)]
    pub municipal_admin: Vec<String>,
    #[serde(default)]
    pub municipal_auditor: Vec<String>,
    /// Values that make the sign-in the server administrator. Only an operator's own
    /// provider should be trusted with this: it gives every municipality's directory and
    /// agreements.
    #[serde(default)]
    pub server_admin: Vec<String>,
    /// Refuse an administrative role to a sign-in without a second factor (by `amr`/`acr`,
    /// as for `require_mfa`), whatever the municipality requires of professionals.
    #[serde(default = "default_true")]
    pub require_mfa: bool,
}

fn default_role_claim() -> String {
    "roles".into()
}

fn default_true() -> bool {
    true
}

impl Default for RoleClaims {
    fn default() -> RoleClaims {
        RoleClaims {
            claim: default_role_claim(),
            municipal_admin: Vec::new(),
            municipal_auditor: Vec::new(),
            server_admin: Vec::new(),
            require_mfa: true,
        }
    }
}

/// What the configuration file may contain. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_base_url: Option<String>,
    pub body_limit_bytes: Option<usize>,
    pub search_parameters_dir: Option<PathBuf>,
    pub audit_retention_days: Option<i64>,
    pub metrics_token: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
    pub unknown_profiles: Option<UnknownProfiles>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub binary: BinarySettings,
    pub subscriptions: Option<SubscriptionSettings>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

/// Values given on the command line or in the environment (clap fills these).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_base_url: Option<String>,
    pub body_limit_bytes: Option<usize>,
    pub search_parameters_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub demo: bool,
    pub audit_retention_days: Option<i64>,
    pub metrics_token: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[[clients]] '{client_id}': {problem}")]
    Client { client_id: String, problem: String },
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("listen: '{0}' is not a socket address such as 127.0.0.1:8080")]
    Listen(String),
    #[error("[[tenants]] '{slug}': {problem}")]
    Tenant { slug: String, problem: String },
    #[error("{path}: {source}")]
    InFile { path: PathBuf, source: Box<ConfigError> },
    #[error("[[clients]] '{client_id}': jwks_file {path}: {source}")]
    KeyFile { client_id: String, path: PathBuf, source: std::io::Error },
    #[error("search parameter file {path}: {problem}")]
    SearchParameter { path: PathBuf, problem: String },
    #[error("audit_retention_days: must be zero or more, not {0}")]
    Retention(i64),
    #[error("no tenants are configured: add [[tenants]] to the configuration file, or start with --demo")]
    NoTenants,
}

impl Config {
    /// Lays command-line and environment overrides over the configuration file and defaults.
    pub fn resolve(overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_text = overrides.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let data_dir = overrides.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = overrides
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| default_sqlite_url(&data_dir));
        let public_base_url = overrides
            .public_base_url
            .or(file.public_base_url)
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let mut tenants = file.tenants;
        if tenants.is_empty() && overrides.demo {
            tenants = demo_tenants();
        }
        if tenants.is_empty() {
            return Err(ConfigError::NoTenants);
        }
        // What the file says is wrong is reported with the file's name.
        let in_file = |error: ConfigError| match &overrides.config_file {
            Some(path) => ConfigError::InFile { path: path.clone(), source: Box::new(error) },
            None => error,
        };
        validate_tenants(&tenants).map_err(in_file)?;
        let mut clients = file.clients;
        for client in &mut clients {
            if let Some(path) = client.jwks_file.take() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| in_file(ConfigError::KeyFile { client_id: client.client_id.clone(), path: path.clone(), source }))?;
                let jwks = serde_json::from_str(&text).map_err(|e| {
                    in_file(ConfigError::Client { client_id: client.client_id.clone(), problem: format!("jwks_file {}: not JSON: {e}", path.display()) })
                })?;
                client.jwks = Some(jwks);
            }
            client.check().map_err(|problem| in_file(ConfigError::Client { client_id: client.client_id.clone(), problem }))?;
            if !tenants.iter().any(|t| t.slug == client.tenant) {
                let problem = format!("tenant: '{}' is not configured", client.tenant);
                return Err(in_file(ConfigError::Client { client_id: client.client_id.clone(), problem }));
            }
        }
        let extra_search_parameters = match overrides.search_parameters_dir.or(file.search_parameters_dir) {
            Some(directory) => read_search_parameters(&directory)?,
            None => Vec::new(),
        };
        let audit_retention_days =
            overrides.audit_retention_days.or(file.audit_retention_days).unwrap_or(DEFAULT_AUDIT_RETENTION_DAYS);
        if audit_retention_days < 0 {
            return Err(ConfigError::Retention(audit_retention_days));
        }
        Ok(Config {
            audit_retention_days,
            audit_off_for_benchmarks_only: false,
            listen,
            data_dir,
            database_url,
            public_base_url,
            body_limit_bytes: overrides
                .body_limit_bytes
                .or(file.body_limit_bytes)
                .unwrap_or(DEFAULT_BODY_LIMIT_BYTES),
            tenants,
            clients,
            demo: overrides.demo,
            extra_search_parameters,
            limits: file.limits,
            metrics_token: overrides.metrics_token.or(file.metrics_token).filter(|token| !token.is_empty()),
            shutdown_grace_ms: overrides.shutdown_grace_ms.or(file.shutdown_grace_ms).unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
            unknown_profiles: file.unknown_profiles.unwrap_or_default(),
            binary: file.binary,
            subscriptions: match file.subscriptions {
                Some(settings) => settings,
                None if overrides.demo => SubscriptionSettings::demo(),
                None => SubscriptionSettings::default(),
            },
        })
    }

    /// The FHIR base URL of a tenant as clients see it.
    pub fn base_url(&self, tenant_slug: &str) -> String {
        format!("{}/{}/fhir", self.public_base_url, tenant_slug)
    }
}

/// The SQLite file in the data directory, created on first run.
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("renraku.sqlite").display())
}

/// The three Nagano municipalities of the demo: 伊那市, 南箕輪村 and 箕輪町.
pub fn demo_tenants() -> Vec<TenantConfig> {
    vec![
        TenantConfig { slug: "ina".into(), code: "202096".into(), name: "伊那市".into(), login: None },
        TenantConfig { slug: "minamiminowa".into(), code: "203858".into(), name: "南箕輪村".into(), login: None },
        TenantConfig { slug: "minowa".into(), code: "203831".into(), name: "箕輪町".into(), login: None },
    ]
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
}

/// Every SearchParameter in the `*.json` files of `directory` (a file may hold one
/// SearchParameter or a Bundle of them).
pub fn read_search_parameters(directory: &Path) -> Result<Vec<serde_json::Value>, ConfigError> {
    let problem = |path: &Path, problem: String| ConfigError::SearchParameter { path: path.to_owned(), problem };
    let entries = std::fs::read_dir(directory).map_err(|e| problem(directory, e.to_string()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.retain(|p| p.extension().is_some_and(|ext| ext == "json"));
    paths.sort();
    let mut found = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| problem(&path, e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| problem(&path, e.to_string()))?;
        let resource_type = value.get("resourceType").and_then(serde_json::Value::as_str).map(str::to_owned);
        match resource_type.as_deref() {
            Some("SearchParameter") => found.push(value),
            Some("Bundle") => found.extend(
                value
                    .get("entry")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("resource").cloned())
                    .filter(|r| r.get("resourceType").and_then(serde_json::Value::as_str) == Some("SearchParameter")),
            ),
            _ => return Err(problem(&path, "not a SearchParameter or a Bundle of them".into())),
        }
    }
    Ok(found)
}

fn validate_tenants(tenants: &[TenantConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for tenant in tenants {
        let problem = |problem: &str| ConfigError::Tenant { slug: tenant.slug.clone(), problem: problem.to_owned() };
        check_tenant(tenant).map_err(|message| problem(&message))?;
        if !seen.insert(tenant.slug.as_str()) {
            return Err(problem("slug: configured twice"));
        }
    }
    Ok(())
}

/// Slugs that name the gateway's own paths, not municipalities.
const RESERVED_SLUGS: [&str; 4] = ["admin", "auth", "healthz", "metadata"];

/// The rules every municipality's settings follow (configured or added by an administrator).
pub fn check_tenant(tenant: &TenantConfig) -> Result<(), String> {
    let slug_ok = !tenant.slug.is_empty()
        && tenant.slug.len() <= 40
        && tenant.slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !slug_ok {
        return Err("slug: 1 to 40 lower-case ASCII letters, digits and '-'".into());
    }
    if RESERVED_SLUGS.contains(&tenant.slug.as_str()) {
        return Err(format!("slug: '{}' is reserved for the gateway's own paths", tenant.slug));
    }
    if !is_valid_local_government_code(&tenant.code) {
        return Err(format!("code: '{}' is not a six-digit 全国地方公共団体コード with a correct check digit", tenant.code));
    }
    if tenant.name.trim().is_empty() {
        return Err("name: must not be empty".into());
    }
    Ok(())
}

/// Checks the six-digit local government code: five digits and a modulus-11 check digit.
pub fn is_valid_local_government_code(code: &str) -> bool {
    let digits: Vec<u32> = code.chars().filter_map(|c| c.to_digit(10)).collect();
    if code.len() != 6 || digits.len() != 6 {
        return false;
    }
    let weighted: u32 = digits.iter().take(5).zip([6, 5, 4, 3, 2]).map(|(d, w)| d * w).sum();
    // The check digit is the last digit of 11 minus the weighted sum modulo 11.
    let check = (11 - weighted % 11) % 10;
    digits.get(5) == Some(&check)
}

/// The authorization server's URLs for one municipality.
pub struct Endpoints {
    pub issuer: String,
    pub token: String,
    pub authorize: String,
    pub introspect: String,
    pub revoke: String,
    pub jwks: String,
}

impl Endpoints {
    pub fn of(config: &Config, tenant: &str) -> Endpoints {
        let issuer = format!("{}/{tenant}/auth", config.public_base_url);
        Endpoints {
            token: format!("{issuer}/token"),
            authorize: format!("{issuer}/authorize"),
            introspect: format!("{issuer}/introspect"),
            revoke: format!("{issuer}/revoke"),
            jwks: format!("{issuer}/jwks"),
            issuer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_codes_carry_correct_check_digits() {
        for tenant in demo_tenants() {
            assert!(is_valid_local_government_code(&tenant.code), "{}", tenant.code);
        }
        assert!(!is_valid_local_government_code("202097"));
        assert!(!is_valid_local_government_code("20209"));
    }

    #[test]
    fn overrides_win_over_file_and_defaults() {
        let resolved = Config::resolve(Overrides {
            listen: Some("127.0.0.1:9999".into()),
            demo: true,
            ..Overrides::default()
        });
        let Ok(config) = resolved else { panic!("demo configuration resolves: {resolved:?}") };
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.public_base_url, "http://127.0.0.1:9999");
        assert_eq!(config.tenants.len(), 3);
        assert!(config.database_url.starts_with("sqlite://"));
    }

    #[test]
    fn no_tenants_is_a_clear_error() {
        assert!(matches!(Config::resolve(Overrides::default()), Err(ConfigError::NoTenants)));
    }

    fn with_file(text: &str) -> Result<Config, ConfigError> {
        let directory = std::env::temp_dir().join(format!("renraku-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).map_err(|source| ConfigError::Read { path: directory.clone(), source })?;
        let path = directory.join("renraku.toml");
        std::fs::write(&path, text).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let resolved = Config::resolve(Overrides { config_file: Some(path), ..Overrides::default() });
        let _ = std::fs::remove_dir_all(&directory);
        resolved
    }

    const TENANT: &str = "[[tenants]]\nslug = \"ina\"\ncode = \"202096\"\nname = \"伊那市\"\n";

    #[test]
    fn clients_are_read_and_checked() {
        let client = r#"
[[clients]]
client_id = "central-hospital-ehr"
tenant = "ina"
kind = "system"
organization = "ina-central-hospital"
scopes = "system/*.rs system/Communication.c"
jwks = { keys = [ { kty = "EC", crv = "P-384", kid = "ehr-2026", x = "AAAA", y = "BBBB" } ] }
"#;
        let resolved = with_file(&format!("{TENANT}{client}"));
        let Ok(config) = resolved else { panic!("configuration resolves: {resolved:?}") };
        assert_eq!(config.clients.len(), 1);
        assert_eq!(config.clients[0].jwks.as_ref().and_then(|j| j["keys"][0]["kid"].as_str()), Some("ehr-2026"));
        let without_keys = client.replace("jwks = { keys = [ { kty = \"EC\", crv = \"P-384\", kid = \"ehr-2026\", x = \"AAAA\", y = \"BBBB\" } ] }", "");
        let refused = with_file(&format!("{TENANT}{without_keys}"));
        let in_file = |error: &Result<Config, ConfigError>| match error {
            Err(ConfigError::InFile { source, .. }) => match source.as_ref() {
                ConfigError::Client { problem, .. } => problem.clone(),
                other => other.to_string(),
            },
            other => format!("{other:?}"),
        };
        assert!(in_file(&refused).starts_with("jwks"), "{refused:?}");
        let elsewhere = with_file(&format!("{TENANT}{}", client.replace("tenant = \"ina\"", "tenant = \"minowa\"")));
        assert!(in_file(&elsewhere).starts_with("tenant"), "{elsewhere:?}");
    }
}
