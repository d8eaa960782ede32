//! Notifications over HTTP: the Subscription operations (`$status`, `$events`,
//! `$get-ws-binding-token`) and the websocket endpoint of each base
//! (`[base]/websocket`). A websocket client binds with a binding token, in the Backport IG's
//! text form (`bind-with-token: <token>`) or the JSON form some clients send
//! (`{"type": "bind-with-token", "payload": {"token": "…"}}`); it may bind several
//! subscriptions, unbind (`unbind-from-token: <token>`), and `ping` (text or
//! `{"type":"ping"}`) for a `pong`. A binding ends when its token expires or the access token
//! it came from is revoked; the server closes the socket when its last binding has expired.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::request::FhirRequest;
use super::response::Reply;
use super::AppState;
use crate::error::Error;

/// `GET|POST [base]/Subscription/[id]/$operation`.
pub async fn operation(request: &FhirRequest, state: &AppState, id: &str, operation: &str) -> Reply {
    let fhir = &state.fhir;
    let result = match operation {
        "$status" => fhir.subscription_status(&request.context, id).await,
        "$events" => fhir.subscription_events(&request.context, id, &request.query).await,
        "$get-ws-binding-token" => {
            let token = bearer(request).ok_or_else(|| request.fail(Error::Unauthorized("a bearer token is required".into())))?;
            fhir.websocket_binding_token(&request.context, id, &token).await
        }
        other => Err(Error::NotFound(format!("the operation Subscription/{id}/{other}"))),
    };
    Ok(request.reply(StatusCode::OK, result.map_err(|e| request.fail(e))?))
}

fn bearer(request: &FhirRequest) -> Option<String> {
    let value = request.headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// `GET [base]/websocket` (an upgrade).
pub async fn websocket(State(state): State<AppState>, Path(tenant): Path<String>, upgrade: WebSocketUpgrade) -> Response {
    if !state.fhir.serves(&tenant) {
        return (StatusCode::NOT_FOUND, "unknown municipality").into_response();
    }
    // Clients send a line or a small JSON object; nothing larger is read.
    upgrade.max_message_size(MAX_MESSAGE_BYTES).on_upgrade(move |socket| session(state, tenant, socket))
}

const MAX_MESSAGE_BYTES: usize = 4096;
/// How long a socket may stay open without a binding.
const UNBOUND_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// The most subscriptions one socket binds.
const MAX_BINDINGS: usize = 16;

/// What a client's text message asks.
enum Ask {
    Bind(String),
    Unbind(String),
    Ping,
    Unknown,
}

fn ask(text: &str) -> Ask {
    let text = text.trim();
    if let Some(token) = text.strip_prefix("bind-with-token:") {
        return Ask::Bind(token.trim().to_owned());
    }
    if let Some(token) = text.strip_prefix("unbind-from-token:").or_else(|| text.strip_prefix("unbind-with-token:")) {
        return Ask::Unbind(token.trim().to_owned());
    }
    if text.eq_ignore_ascii_case("ping") {
        return Ask::Ping;
    }
    let Ok(message) = serde_json::from_str::<Value>(text) else { return Ask::Unknown };
    let text_at = |pointer: &str| message.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned();
    let token = Some(text_at("/payload/token")).filter(|t| !t.is_empty()).unwrap_or_else(|| text_at("/bindingToken"));
    match text_at("/type").as_str() {
        "bind-with-token" => Ask::Bind(token),
        "unbind-from-token" | "unbind-with-token" => Ask::Unbind(token),
        "ping" => Ask::Ping,
        _ => Ask::Unknown,
    }
}

async fn session(state: AppState, tenant: String, mut socket: WebSocket) {
    let hub = &state.fhir.subscriptions;
    let (sender, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<String>();
    // token → (subscription, binding id, expiry in unix ms)
    let mut bindings: Vec<(String, String, u64, i64)> = Vec::new();
    let mut unbound_since = Some(tokio::time::Instant::now());
    loop {
        match (bindings.is_empty(), unbound_since) {
            (true, None) => unbound_since = Some(tokio::time::Instant::now()),
            (false, Some(_)) => unbound_since = None,
            _ => {}
        }
        let unbound_deadline = unbound_since.map(|since| since + UNBOUND_GRACE);
        let now = state.fhir.clock.now().timestamp_millis();
        bindings.retain(|(_, subscription, id, expires_at)| {
            let live = *expires_at > now;
            if !live {
                hub.unbind(subscription, *id);
            }
            live
        });
        let next_expiry = bindings.iter().map(|(_, _, _, e)| *e).min();
        let wait = next_expiry.map_or(std::time::Duration::from_secs(3600), |e| std::time::Duration::from_millis(u64::try_from(e - now).unwrap_or(0)));
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break };
                let text = match message {
                    Message::Text(text) => text.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let answer = match ask(&text) {
                    Ask::Bind(token) if bindings.iter().any(|(bound, ..)| *bound == token) => json!({ "type": "error", "message": "already bound with this token" }).to_string(),
                    Ask::Bind(_) if bindings.len() >= MAX_BINDINGS => json!({ "type": "error", "message": "too many bindings on one socket" }).to_string(),
                    Ask::Bind(token) => match state.fhir.bind_websocket(&tenant, &token).await {
                        Ok((subscription, token_digest, expires_at, handshake)) => {
                            let id = hub.bind(&subscription, sender.clone(), token_digest, expires_at);
                            bindings.push((token, subscription, id, expires_at));
                            handshake
                        }
                        // The same words whatever went wrong: nothing internal reaches an
                        // unauthenticated socket.
                        Err(_) => json!({ "type": "error", "message": "the binding token is invalid or expired" }).to_string(),
                    },
                    Ask::Unbind(token) => {
                        bindings.retain(|(bound, subscription, id, _)| {
                            let keep = *bound != token;
                            if !keep {
                                hub.unbind(subscription, *id);
                            }
                            keep
                        });
                        json!({ "type": "unbound" }).to_string()
                    }
                    Ask::Ping => json!({ "type": "pong" }).to_string(),
                    Ask::Unknown => json!({ "type": "error", "message": "expected bind-with-token: <token>, unbind-from-token: <token> or ping" }).to_string(),
                };
                if socket.send(Message::Text(answer.into())).await.is_err() {
                    break;
                }
            }
            Some(notification) = outgoing.recv() => {
                if socket.send(Message::Text(notification.into())).await.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(unbound_deadline.unwrap_or_else(tokio::time::Instant::now)), if unbound_deadline.is_some() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            () = tokio::time::sleep(wait), if next_expiry.is_some() => {
                let now = state.fhir.clock.now().timestamp_millis();
                if bindings.iter().all(|(_, _, _, e)| *e <= now) {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            }
        }
    }
    for (_, subscription, id, _) in bindings {
        hub.unbind(&subscription, id);
    }
}
