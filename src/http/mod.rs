//! The HTTP layer: axum routes and thin handlers (extract, call the service, reply).
//!
//! Architecture invariant: no FHIR rule and no SQL lives here. Handlers translate between
//! HTTP (paths, headers, media types) and the service's calls; every error leaves as an
//! OperationOutcome, including unknown routes (404), wrong methods (405), oversize bodies
//! (413) and panics (500), each with an `X-Request-Id`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::error::Error;
use crate::fhir::format::Format;
use crate::outcome::{Issue, IssueCode, OperationOutcome};
use crate::service::history::Level;
use crate::service::Fhir;

pub mod admin;
pub mod binary;
pub mod oauth;
pub mod pages;
pub mod request;
pub mod response;
pub mod subscriptions;

use request::{ClientAddress, FhirRequest, RawBody, RequestId};
use response::{ErrorReply, Reply};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub fhir: Arc<Fhir>,
    pub config: Arc<Config>,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let fhir = Router::new()
        .route("/{tenant}/fhir", get(system_search).post(bundle).fallback(method_not_allowed))
        // `[base]/` is the base too: several client libraries send transactions and system
        // searches there.
        .route("/{tenant}/fhir/", get(system_search).post(bundle).fallback(method_not_allowed))
        .route("/{tenant}/fhir/metadata", get(metadata).fallback(method_not_allowed))
        .route("/{tenant}/fhir/openapi.json", get(openapi).fallback(method_not_allowed))
        .route("/{tenant}/fhir/.well-known/smart-configuration", get(oauth::smart_configuration).fallback(method_not_allowed))
        .route("/{tenant}/auth/token", post(oauth::token).fallback(method_not_allowed))
        .route("/{tenant}/auth/introspect", post(oauth::introspect).fallback(method_not_allowed))
        .route("/{tenant}/auth/revoke", post(oauth::revoke).fallback(method_not_allowed))
        .route("/{tenant}/auth/authorize", get(pages::authorize).post(pages::authorize).fallback(method_not_allowed))
        .route("/{tenant}/auth/login", post(pages::login).fallback(method_not_allowed))
        .route("/{tenant}/auth/callback", get(pages::callback).fallback(method_not_allowed))
        .route("/{tenant}/auth/launch", post(pages::mint_launch).fallback(method_not_allowed))
        .route("/{tenant}/auth/consent", post(pages::consent).fallback(method_not_allowed))
        .route("/{tenant}/auth/jwks", get(pages::jwks).fallback(method_not_allowed))
        .route("/{tenant}/auth/smart-style.json", get(pages::smart_style).fallback(method_not_allowed))
        .route("/{tenant}/auth/.well-known/openid-configuration", get(pages::openid_configuration).fallback(method_not_allowed))
        .route("/{tenant}/fhir/_history", get(history_system).fallback(method_not_allowed))
        .route("/{tenant}/fhir/websocket", get(subscriptions::websocket).fallback(method_not_allowed))
        .route(
            "/{tenant}/fhir/{resource_type}",
            get(search).post(create).put(conditional_update).delete(conditional_delete).fallback(method_not_allowed),
        )
        .route("/{tenant}/fhir/{resource_type}/_search", post(search_post).fallback(method_not_allowed))
        .route("/{tenant}/fhir/{resource_type}/_history", get(history_type).fallback(method_not_allowed))
        .route(
            "/{tenant}/fhir/{resource_type}/{id}",
            get(read).put(update).patch(patch).delete(delete).fallback(method_not_allowed),
        )
        .route("/{tenant}/fhir/{resource_type}/{id}/_history", get(history_instance).fallback(method_not_allowed))
        .route(
            "/{tenant}/fhir/{resource_type}/{id}/{compartment_type}",
            get(compartment).post(instance_operation).fallback(method_not_allowed),
        )
        .route("/{tenant}/fhir/{resource_type}/{id}/_history/{version}", get(vread).fallback(method_not_allowed));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .route("/admin/tenants", get(admin::list_tenants).post(admin::add_tenant).fallback(method_not_allowed))
        .route("/admin/signing-keys/rotate", post(admin::rotate_signing_key).fallback(method_not_allowed))
        .route("/admin/clients", get(admin::list_clients).post(admin::register_client).fallback(method_not_allowed))
        .route("/admin/clients/{tenant}/{client_id}", axum::routing::delete(admin::remove_client).fallback(method_not_allowed))
        .route("/admin/clients/{tenant}/{client_id}/approve", post(admin::approve_client).fallback(method_not_allowed))
        .merge(fhir)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(state.clone(), request_timeout))
        .layer(middleware::from_fn_with_state(state.clone(), url_limit))
        .layer(middleware::from_fn(outcome_for_plain_errors))
        .layer(middleware::from_fn(request_id))
        .layer(cors(&state))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// CORS for the browser apps registered here, nothing for any other origin: a preflight
/// from an app's origin is answered (without a token), a request from it gets the
/// `Access-Control-Allow-*` headers, and other origins get none (the browser then refuses).
fn cors(state: &AppState) -> tower_http::cors::CorsLayer {
    use axum::http::{header, Method};
    let fhir = state.fhir.clone();
    let allowed = tower_http::cors::AllowOrigin::predicate(move |origin, parts| {
        origin.to_str().is_ok_and(|origin| fhir.allows_origin(origin, parts.uri.path()))
    });
    tower_http::cors::CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::HeaderName::from_static("if-none-exist"),
            header::HeaderName::from_static("prefer"),
            header::HeaderName::from_static("x-purpose-of-use"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LAST_MODIFIED,
            header::CONTENT_LOCATION,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(std::time::Duration::from_secs(600))
        .vary([header::ORIGIN])
}

tokio::task_local! {
    /// The request id, for the panic catcher (which sees no request).
    static CURRENT_REQUEST_ID: String;
}

/// Gives every request an id, visible to handlers and echoed as `X-Request-Id` (also on the
/// answer to a panic, which is caught inside this layer). Time-ordered (UUID version 7): every
/// audit event is indexed by its request's id, and a random id put each event's index row on
/// a page of its own, written (and first read) once per event.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let address = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip().to_string());
    request.extensions_mut().insert(ClientAddress(address));
    let mut response = CURRENT_REQUEST_ID.scope(id.clone(), crate::policy::facts::with_request_generations(crate::store::with_request_connection(next.run(request)))).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The last resort for "every error is an OperationOutcome": an error that axum itself
/// answered in plain text (a path segment that is not valid percent-encoded UTF-8, a body
/// it could not read) keeps its status and gets its text as the outcome's diagnostics.
async fn outcome_for_plain_errors(request: Request, next: Next) -> Response {
    let request_id = request_id_of(&request);
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain || status == StatusCode::NOT_MODIFIED {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let code = if status.is_server_error() { IssueCode::Exception } else { IssueCode::Invalid };
    let diagnostics = if status.is_server_error() || text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let outcome = OperationOutcome::new(vec![Issue::error(code, diagnostics)]).with_request_id(&request_id).to_json();
    let mut rebuilt = (status, axum::Json(outcome)).into_response();
    for (name, value) in parts.headers.iter().filter(|(name, _)| *name != axum::http::header::CONTENT_TYPE && *name != axum::http::header::CONTENT_LENGTH) {
        rebuilt.headers_mut().insert(name.clone(), value.clone());
    }
    rebuilt.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    rebuilt
}

/// Refuses a request whose path and query are longer than `limits.url_bytes` (414), before
/// anything parses them.
async fn url_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed = state.config.limits.url_bytes;
    let length = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if length > allowed {
        let request_id = request_id_of(&request);
        return ErrorReply { error: Error::UrlTooLong { length, allowed }, format: Format::Json, request_id }.into_response();
    }
    next.run(request).await
}

/// Abandons a request that takes longer than `limits.request_timeout_ms`: the client gets
/// a 503 OperationOutcome, and the work (with its database transaction, rolled back) is
/// dropped. A statement still running in PostgreSQL ends at `statement_timeout_ms`.
async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed_ms = state.config.limits.request_timeout_ms;
    let request_id = request_id_of(&request);
    // The request's work is dropped here, once the time is up, before what it kept is settled.
    // A read's events are committed while its response is made; it leaves once they are.
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(allowed_ms), crate::runtime::recorder::answered_after_commits(next.run(request))).await;
    match outcome {
        Ok((response, Ok(()))) => response,
        Ok((_, Err(error))) => ErrorReply { error, format: Format::Json, request_id }.into_response(),
        Err(_) => {
            // Its connections, given back while their statements may still run.
            crate::store::abandon_request_connection();
            ErrorReply { error: Error::Timeout { allowed_ms }, format: Format::Json, request_id }.into_response()
        }
    }
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    let request_id = CURRENT_REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
    ErrorReply { error: Error::Internal(format!("panic: {detail}")), format: Format::Json, request_id }.into_response()
}

fn request_id_of(request: &Request) -> String {
    request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default()
}

async fn not_found(request: Request) -> ErrorReply {
    let path = request.uri().path().to_owned();
    ErrorReply { error: Error::NotFound(format!("the path '{path}'")), format: Format::Json, request_id: request_id_of(&request) }
}

async fn method_not_allowed(request: Request) -> ErrorReply {
    ErrorReply { error: Error::MethodNotAllowed, format: Format::Json, request_id: request_id_of(&request) }
}

/// Counts and logs every answered request by route template, method and status, with its
/// latency (outermost, so refusals of the other layers count too).
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let tenant = route.starts_with("/{tenant}/").then(|| request.uri().path().split('/').nth(1).unwrap_or_default().to_owned());
    let principal_kind = request::PrincipalKind::default();
    let mut request = request;
    request.extensions_mut().insert(principal_kind.clone());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.fhir.metrics.request(&route, &method, status, elapsed.as_secs_f64());
    // One line per request: the route template, not the URL (ids and search strings carry
    // personal information); no content, no names.
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info!(
        target: "renraku::request",
        request_id,
        tenant = tenant.as_deref().unwrap_or("-"),
        principal = principal_kind.get(),
        method = %method,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// `GET /livez`: the process is alive and answers (nothing else is checked).
async fn livez() -> Response {
    (StatusCode::OK, "alive").into_response()
}

/// `GET /metrics`: Prometheus' text format, for the bearer of `metrics_token`; off (404)
/// without one. The pool, the audit journal's lag and the token cache are read now.
async fn metrics(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request_id_of(&request);
    let Some(expected) = state.config.metrics_token.as_deref() else {
        return ErrorReply { error: Error::NotFound("/metrics".into()), format: Format::Json, request_id }.into_response();
    };
    let presented = request.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(expected) {
        return ErrorReply { error: Error::Unauthorized("GET /metrics needs the metrics token".into()), format: Format::Json, request_id }
            .into_response();
    }
    let fhir = &state.fhir;
    let (open, idle) = fhir.store.pool_usage();
    fhir.metrics.gauge("renraku_db_pool_connections", vec![metrics::Label::new("state", "open")], f64::from(open));
    fhir.metrics.gauge("renraku_db_pool_connections", vec![metrics::Label::new("state", "idle")], idle as f64);
    if let Ok(mut connection) = fhir.store.connection().await {
        if let Ok(lag) = crate::store::audit::unprojected(&mut connection).await {
            fhir.metrics.gauge("renraku_audit_journal_unprojected_events", Vec::new(), lag as f64);
        }
        if let Ok(queued) = crate::store::audit::queued(&mut connection).await {
            fhir.metrics.gauge("renraku_audit_queued_events", Vec::new(), queued as f64);
        }
        if let Ok(depth) = crate::store::subscriptions::depth(&mut connection).await {
            fhir.metrics.gauge("renraku_notification_outbox_depth", Vec::new(), depth as f64);
        }
    }
    let lookups = fhir.tokens.lookups();
    for (source, counter) in [("cache", &lookups.hits), ("database", &lookups.misses)] {
        let total = counter.load(std::sync::atomic::Ordering::Relaxed);
        fhir.metrics.counter("renraku_token_lookups_total", vec![metrics::Label::new("source", source)], total);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], fhir.metrics.render()).into_response()
}

/// `GET /healthz`: readiness. 200 when the database answers and takes a write, every
/// migration of this binary is applied, the background task (audit projection,
/// checkpoints) ran within the last minute and the gateway is not shutting down; else 503.
/// The body names each check either way (nothing more: it is unauthenticated).
async fn healthz(State(state): State<AppState>) -> Response {
    let fhir = &state.fhir;
    let database = fhir.store.ping().await;
    let migrations = database && fhir.store.migrations_applied().await;
    let background = fhir.background_silence() < std::time::Duration::from_secs(60);
    let accepting = !fhir.is_draining();
    let ready = database && migrations && background && accepting;
    let mark = |ok: bool| if ok { "ok" } else { "failing" };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {
            "database": mark(database),
            "migrations": mark(migrations),
            "background": mark(background),
            "accepting": mark(accepting)
        }
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// `GET [base]/openapi.json`: plain JSON (an OpenAPI document is no FHIR resource).
async fn openapi(request: FhirRequest, State(state): State<AppState>) -> Response {
    axum::Json(state.fhir.openapi(&request.context)).into_response()
}

async fn metadata(request: FhirRequest, State(state): State<AppState>) -> Reply {
    Ok(request.reply(StatusCode::OK, state.fhir.capability_statement(&request.context)))
}

async fn read(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id)): Path<(String, String, String)>,
) -> Result<Response, ErrorReply> {
    if resource_type == "Patient" && id == "$unread" {
        let counts = state.fhir.unread(&request.context, None, &request.query).await.map_err(|e| request.fail(e))?;
        return Ok(request.reply(StatusCode::OK, counts).into_response());
    }
    let stored = state.fhir.read(&request.context, &resource_type, &id).await.map_err(|e| request.fail(e))?;
    let unchanged_etag = request.if_none_match == Some(stored.version_id);
    let unchanged_since = request.if_modified_since.is_some_and(|since| {
        chrono::DateTime::parse_from_rfc3339(&stored.last_updated)
            .map(|updated| updated.timestamp() <= since.timestamp())
            .unwrap_or(false)
    });
    if unchanged_etag || (request.if_none_match.is_none() && unchanged_since) {
        let mut reply = request.resource_reply(StatusCode::NOT_MODIFIED, stored, false)?;
        reply.body = None;
        return Ok(reply.into_response());
    }
    binary_or_resource(&request, &state, stored).await
}

/// A read's answer: a Binary as its raw content when the client did not ask for a FHIR
/// format, else (a Binary with its content as `data`) the resource.
async fn binary_or_resource(request: &FhirRequest, state: &AppState, stored: crate::service::Stored) -> Result<Response, ErrorReply> {
    if stored.resource_type != "Binary" {
        return Ok(request.resource_reply(StatusCode::OK, stored, false)?.into_response());
    }
    let content = state.fhir.binary_content(&stored).await.map_err(|e| request.fail(e))?;
    if request.native {
        return binary::native_reply(&stored, content.unwrap_or_default(), &request.headers).map_err(|e| request.fail(e));
    }
    Ok(request.resource_reply(StatusCode::OK, binary::with_data(stored, content), false)?.into_response())
}

async fn vread(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id, version)): Path<(String, String, String, String)>,
) -> Result<Response, ErrorReply> {
    let stored = state.fhir.vread(&request.context, &resource_type, &id, &version).await.map_err(|e| request.fail(e))?;
    binary_or_resource(&request, &state, stored).await
}

async fn create(request: FhirRequest, State(state): State<AppState>, Path((_, resource_type)): Path<(String, String)>, body: RawBody) -> Reply {
    let resource = resource_of(&request, &state, &resource_type, &body, None)?;
    let written = state
        .fhir
        .create(&request.context, &resource_type, resource, request.if_none_exist.as_deref())
        .await
        .map_err(|e| request.fail(e))?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    request.resource_reply(status, written.stored, true)
}

async fn update(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id)): Path<(String, String, String)>,
    body: RawBody,
) -> Reply {
    let resource = resource_of(&request, &state, &resource_type, &body, Some(&id))?;
    let written = state
        .fhir
        .update(&request.context, &resource_type, &id, resource, request.if_match)
        .await
        .map_err(|e| request.fail(e))?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    request.resource_reply(status, written.stored, true)
}

async fn conditional_update(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type)): Path<(String, String)>,
    body: RawBody,
) -> Reply {
    let resource = body.resource(&state.config.limits).map_err(|e| request.fail(e))?;
    let written = state
        .fhir
        .conditional_update(&request.context, &resource_type, &request.raw_query, resource, request.if_match)
        .await
        .map_err(|e| request.fail(e))?;
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    request.resource_reply(status, written.stored, true)
}

async fn patch(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id)): Path<(String, String, String)>,
    body: RawBody,
) -> Reply {
    let document = body.json_patch(&state.config.limits).map_err(|e| request.fail(e))?;
    let written = state
        .fhir
        .patch(&request.context, &resource_type, &id, document, request.if_match)
        .await
        .map_err(|e| request.fail(e))?;
    request.resource_reply(StatusCode::OK, written.stored, true)
}

async fn delete(request: FhirRequest, State(state): State<AppState>, Path((_, resource_type, id)): Path<(String, String, String)>) -> Reply {
    let cascade = crate::service::bundle::cascade_requested(Some(&request.raw_query));
    state.fhir.delete(&request.context, &resource_type, &id, request.if_match, cascade).await.map_err(|e| request.fail(e))?;
    Ok(no_content(&request))
}

async fn conditional_delete(request: FhirRequest, State(state): State<AppState>, Path((_, resource_type)): Path<(String, String)>) -> Reply {
    state
        .fhir
        .conditional_delete(&request.context, &resource_type, &request.raw_query)
        .await
        .map_err(|e| request.fail(e))?;
    Ok(no_content(&request))
}

/// The resource a create or update sends: its body parsed, or for a Binary sent in its
/// native form (an image, a PDF) the Binary that stands for the content.
fn resource_of(request: &FhirRequest, state: &AppState, resource_type: &str, body: &RawBody, id: Option<&str>) -> Result<serde_json::Value, ErrorReply> {
    if resource_type == "Binary" && binary::is_native(body) {
        return binary::from_native(&state.config.binary, body, &request.headers, id).map_err(|e| request.fail(e));
    }
    body.resource(&state.config.limits).map_err(|e| request.fail(e))
}

fn no_content(request: &FhirRequest) -> response::FhirReply {
    let mut reply = request.reply(StatusCode::NO_CONTENT, serde_json::Value::Null);
    reply.body = None;
    reply
}

async fn search(request: FhirRequest, State(state): State<AppState>, Path((_, resource_type)): Path<(String, String)>) -> Reply {
    let bundle = state.fhir.search(&request.context, &resource_type, &request.query).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

async fn search_post(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type)): Path<(String, String)>,
    body: RawBody,
) -> Reply {
    let mut pairs = request.query.clone();
    pairs.extend(body.form().map_err(|e| request.fail(e))?);
    let bundle = state.fhir.search(&request.context, &resource_type, &pairs).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

/// `GET [base]/Patient/[id]/[type]`: search within a Patient's compartment.
async fn compartment(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id, compartment_type)): Path<(String, String, String, String)>,
) -> Reply {
    if resource_type == "Subscription" && compartment_type.starts_with('$') {
        return subscriptions::operation(&request, &state, &id, &compartment_type).await;
    }
    if resource_type != "Patient" {
        return Err(request.fail(Error::NotFound(format!("the compartment {resource_type}/{id}/{compartment_type}"))));
    }
    let result = if compartment_type == "$everything" {
        state.fhir.everything(&request.context, &id, &request.query).await
    } else if compartment_type == "$access-report" {
        state.fhir.access_report(&request.context, &id, &request.query).await
    } else if compartment_type == "$read-status" {
        state.fhir.read_status(&request.context, &id, &request.query).await
    } else if compartment_type == "$unread" {
        state.fhir.unread(&request.context, Some(&id), &request.query).await
    } else {
        state.fhir.compartment_search(&request.context, &id, &compartment_type, &request.query).await
    };
    Ok(request.reply(StatusCode::OK, result.map_err(|e| request.fail(e))?))
}

/// `POST [base]/Patient/[id]/$mark-read` (the one instance operation taking a body).
async fn instance_operation(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id, operation)): Path<(String, String, String, String)>,
    body: RawBody,
) -> Reply {
    if resource_type == "Subscription" && operation == "$get-ws-binding-token" {
        return subscriptions::operation(&request, &state, &id, &operation).await;
    }
    if resource_type != "Patient" || operation != "$mark-read" {
        return Err(request.fail(Error::MethodNotAllowed));
    }
    let parameters = body.resource(&state.config.limits).map_err(|e| request.fail(e))?;
    let outcome = state.fhir.mark_read(&request.context, &id, parameters).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, outcome))
}

/// `GET [base]?_type=…`: search across resource types.
async fn system_search(request: FhirRequest, State(state): State<AppState>) -> Reply {
    let bundle = state.fhir.system_search(&request.context, &request.query).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

async fn history_system(request: FhirRequest, State(state): State<AppState>) -> Reply {
    let bundle = state.fhir.history(&request.context, Level::System, &request.query).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

async fn history_type(request: FhirRequest, State(state): State<AppState>, Path((_, resource_type)): Path<(String, String)>) -> Reply {
    let bundle = state
        .fhir
        .history(&request.context, Level::Type(&resource_type), &request.query)
        .await
        .map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

async fn history_instance(
    request: FhirRequest,
    State(state): State<AppState>,
    Path((_, resource_type, id)): Path<(String, String, String)>,
) -> Reply {
    let bundle = state
        .fhir
        .history(&request.context, Level::Instance(&resource_type, &id), &request.query)
        .await
        .map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, bundle))
}

async fn bundle(request: FhirRequest, State(state): State<AppState>, body: RawBody) -> Reply {
    let resource = body.resource(&state.config.limits).map_err(|e| request.fail(e))?;
    let response = state.fhir.process_bundle(&request.context, resource).await.map_err(|e| request.fail(e))?;
    Ok(request.reply(StatusCode::OK, response))
}
