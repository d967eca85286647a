//! The HTTP/JSON API.
//!
//! | route                     | what                                        |
//! |---------------------------|---------------------------------------------|
//! | `POST /v1/transactions`   | run a transaction; answers its outcome      |
//! | `GET /v1/transactions/{id}` | committed, aborted or in doubt            |
//! | `GET /v1/participants`    | participants, versions, broken deploys      |
//! | `PUT /v1/participants/{name}?store=&prefix=&limits=` | deploy a component (the body) |
//! | `DELETE /v1/participants/{name}` | remove a deployed participant        |
//! | `GET /v1/health`          | the process is up                           |
//! | `GET /v1/ready`           | every store answers, with durable settings  |
//! | `GET /metrics`            | Prometheus metrics (see `metrics`)          |
//! | `GET /openapi.json`       | this API as an OpenAPI 3.1 document         |
//!
//! With tokens configured, every route but health and readiness needs a
//! bearer token with its scope (see [`auth`]): `401 unauthorized`,
//! `403 forbidden` otherwise.
//!
//! A transaction that ran answers 200 whether it committed or aborted: the
//! body says which. Anything else is an error with a stable code:
//!
//! ```json
//! {"error": {"code": "unknown_participant", "message": "step 0: no participant named `x`; known: inventory, payments"}}
//! ```
//!
//! 400 for a request that will never work as sent (`malformed_json`,
//! `empty_transaction`, `unknown_participant`, `too_many_steps`,
//! `bad_idempotency_key`), 404 `unknown_transaction` for a lookup, 409
//! `in_flight` while a first request with the same idempotency key runs,
//! 413 for a body over the limit, 503 for a store failure
//! (`store_unavailable`: nothing was applied, send it again;
//! `outcome_unknown`: look the id up later) and for a host at its bounds
//! (`overloaded`, with `Retry-After`: nothing was applied, send it again
//! shortly).
//!
//! Deploys answer the new version (`200`), or `400` (`bad_participant_name`,
//! `bad_manifest`), `404` (`unknown_participant`), `409`
//! (`deploy_disabled`, `configured_in_file`), `413` (`component_too_large`),
//! `422` (`invalid_component`: does not compile, is not a component of the
//! participant world, or imports what it may not).

pub mod auth;
pub mod openapi;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::participants::folder::Manifest;
use crate::participants::{DeployError, Listed, Listing};
use crate::txn::types::{Lookup, TxnRequest, TxnResponse};
use crate::txn::{Coordinator, TxnError};

/// The largest request body accepted. Guards the service against memory
/// exhaustion by a client; far above any sane transaction.
pub const BODY_BYTES_MAX: usize = 4 << 20;

/// The `Retry-After` of an `overloaded` answer, in seconds: the shortest
/// the header can say.
const OVERLOADED_RETRY_AFTER_S: &str = "1";

/// The service's routes over a coordinator, each behind the scope `tokens`
/// require of it (see [`auth`]; [`auth::Tokens::none`] leaves all open).
pub fn router(coordinator: Arc<Coordinator>, tokens: Arc<auth::Tokens>) -> Router {
    let component_bytes_max = coordinator.registry().component_bytes_max();
    let (router, _) = routes(component_bytes_max).split_for_parts();
    router
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(tokens, auth::require))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(coordinator)
}

/// Every route, each registered with its OpenAPI operation (the
/// `#[utoipa::path]` on its handler), so that the router serves exactly what
/// [`openapi::document`] lists.
fn routes(component_bytes_max: usize) -> OpenApiRouter<Arc<Coordinator>> {
    let participant = OpenApiRouter::new()
        .routes(routes!(deploy, remove))
        .layer(DefaultBodyLimit::max(component_bytes_max));
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(submit))
        .routes(routes!(lookup))
        .routes(routes!(participants))
        .merge(participant)
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi::serve))
}

/// Gives every error the JSON shape of the others, whoever answered it:
/// axum's own rejections (a path that is not UTF-8, a method a route does
/// not have) and the fallback for paths that are no route answer plain
/// text, which this wraps as `{"error": {"code", "message"}}`, the code
/// named after the status.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REJECTION_BYTES_MAX)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    };
    let message: String = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let mut wrapped = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            wrapped.headers_mut().append(name, value.clone());
        }
    }
    wrapped
}

/// The most of a plain-text error body [`json_errors`] keeps as the
/// message.
const REJECTION_BYTES_MAX: usize = 4096;

/// The header naming a request on its answer and in the logs.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client; a longer one (or an empty
/// one, or one with other than visible ASCII) is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Names every request: the client's `x-request-id` when it sends a usable
/// one, else a new UUID. The id is on the answer, whatever it is, and on
/// every log line of the request (its `request` span), the transaction's
/// included.
async fn request_id(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_BYTES_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            us = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    let value = HeaderValue::from_str(&id).expect("a request id is visible ASCII");
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

/// Runs a transaction: its steps' declared keys are locked on every store
/// they live on, each step executes against the values read, and the
/// writes commit on all stores or on none. A transaction that ran answers
/// 200, committed or aborted.
#[utoipa::path(
    post,
    path = "/v1/transactions",
    tag = "transactions",
    request_body = TxnRequest,
    responses(
        (status = 200, description = "The transaction ran: `status` says whether it committed or aborted", body = TxnResponse),
        (status = 400, description = "`malformed_json`, `empty_transaction`, `unknown_participant`, `too_many_steps`, `bad_idempotency_key`, `idempotency_key_reused`, `bad_body`: will never work as sent", body = openapi::ErrorBody),
        (status = 409, description = "`in_flight`: a first request with the same idempotency key is still running", body = openapi::ErrorBody),
        (status = 413, description = "`body_too_large`: over the request body limit", body = openapi::ErrorBody),
        (status = 503, description = "`store_unavailable` (nothing applied, send again), `outcome_unknown` (look `error.id` up later), `overloaded` (nothing applied, send again after `Retry-After`), `store_error` (a store holds what the protocol does not expect; nothing applied)", body = openapi::ErrorBody,
            headers(("retry-after" = u32, description = "With `overloaded`: seconds to wait"))),
    ),
    security(("bearer" = ["submit"])),
)]
async fn submit(
    State(coordinator): State<Arc<Coordinator>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), "bad_body", r.body_text()))?;
    let request: TxnRequest = serde_json::from_slice(&body).map_err(|e| {
        let message = format!(
            "{e}; expected {{\"steps\":[{{\"participant\":\"...\",\"input\":{{...}}}}],\"idempotency_key\":\"optional\"}}"
        );
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    })?;
    // On a task of its own, so that a client that disconnects does not cut
    // the transaction short: it finishes, and its outcome can be looked up.
    let run = tokio::spawn(async move { coordinator.run(request).await }.in_current_span());
    let response = run.await.expect("a transaction task does not panic")?;
    Ok(Json(response).into_response())
}

/// What became of a transaction: committed, aborted, or in doubt while
/// its locks are held with no decision.
#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    tag = "transactions",
    params(("id" = String, Path, description = "The id a transaction response (or an `outcome_unknown` error) named")),
    responses(
        (status = 200, description = "What is known of the transaction", body = Lookup),
        (status = 404, description = "`unknown_transaction`: not an id, or no record and no lock of it", body = openapi::ErrorBody),
        (status = 503, description = "`store_unavailable`: a store did not answer; `store_error`: it answered what the protocol does not expect", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["submit"])),
)]
async fn lookup(
    State(coordinator): State<Arc<Coordinator>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = coordinator.lookup(&id).await?;
    let unknown = |message| ApiError::new(StatusCode::NOT_FOUND, "unknown_transaction", message);
    match found {
        Some(found) => Ok(Json(found).into_response()),
        None if !crate::txn::is_txn_id(&id) => Err(unknown(format!(
            "{id:?} is not a transaction id (ids are UUIDs, as responses name them)"
        ))),
        None => Err(unknown(format!(
            "no record and no lock of transaction {id}: it never ran here, it was read-only, or \
             its record is past its retention (txn.answered_retention_s once answered, \
             txn.record_retention_s otherwise)"
        ))),
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Metrics of this host and of its stores", body = String, content_type = "text/plain"),
    ),
    security(("bearer" = ["read"])),
)]
async fn metrics(State(coordinator): State<Arc<Coordinator>>) -> Response {
    // The lock gauges are read from every store at once; a store that does
    // not answer is left out of them (and its failure counted).
    let locks = futures::future::join_all(
        coordinator
            .stores()
            .map(|s| async move { (s.name(), s.lock_counts().await) }),
    )
    .await;
    let registry = coordinator.registry();
    let participants = registry.all();
    let scraped = crate::metrics::Scraped {
        store_errors: coordinator
            .stores()
            .map(|s| {
                let (unavailable, protocol) = s.errors();
                (s.name(), unavailable, protocol)
            })
            .collect(),
        locks: locks
            .into_iter()
            .filter_map(|(store, counts)| counts.ok().map(|(held, expired)| (store, held, expired)))
            .collect(),
        calls: participants.iter().map(|p| (&*p.name, &p.calls)).collect(),
        reuse: participants
            .iter()
            .map(|p| (&*p.name, p.component.reuse_counts()))
            .collect(),
        cache: registry
            .runtime()
            .cache()
            .map(|cache| (cache.compiled(), cache.hits())),
    };
    let text = coordinator.metrics().encode(&scraped);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// Every participant this host runs, and the deploy folder entries that
/// failed to load.
#[utoipa::path(
    get,
    path = "/v1/participants",
    tag = "participants",
    responses(
        (status = 200, description = "Participants and broken deploys", body = Listing),
    ),
    security(("bearer" = ["read"])),
)]
async fn participants(State(coordinator): State<Arc<Coordinator>>) -> Response {
    Json(coordinator.registry().list()).into_response()
}

/// The manifest fields of a deploy, as query parameters.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeployQuery {
    /// The store the participant's keys live on.
    store: String,
    /// The prefix of every key it declares, e.g. `inventory:`.
    #[serde(default)]
    prefix: String,
    /// Instead of `prefix`: the prefixes its keys, named in full, each
    /// start with, separated by commas, e.g. `stock:,reserved:`.
    prefixes: Option<String>,
    /// JSON object of `[limits]` keys to override, e.g. `{"call_time_ms":50}`.
    limits: Option<String>,
    /// Steps one instance may serve (0, the default: a fresh instance per
    /// step).
    reuse_steps: Option<u32>,
    /// The fraction of reused steps audited on a fresh instance (default
    /// 0.01).
    reuse_audit: Option<f64>,
}

/// Deploys a participant: the body is its component. Compiled and checked
/// before it replaces the running version; every host sharing the deploy
/// folder picks it up.
#[utoipa::path(
    put,
    path = "/v1/participants/{name}",
    tag = "participants",
    params(("name" = String, Path, description = "The participant's name"), DeployQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses(
        (status = 200, description = "The new version, running", body = Listed),
        (status = 400, description = "`bad_participant_name`, `bad_manifest`, `bad_body`", body = openapi::ErrorBody),
        (status = 409, description = "`deploy_disabled` (no deploy folder), `configured_in_file` (defined in the config file)", body = openapi::ErrorBody),
        (status = 413, description = "`component_too_large`: over `deploy.component_bytes_max`", body = openapi::ErrorBody),
        (status = 422, description = "`invalid_component`: does not compile, is not a participant component, or imports what it may not", body = openapi::ErrorBody),
        (status = 500, description = "`deploy_failed`: the deploy folder could not be written", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["deploy"])),
)]
async fn deploy(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            r.status(),
            "component_too_large",
            format!(
                "the component is larger than deploy.component_bytes_max ({} bytes)",
                coordinator.registry().component_bytes_max()
            ),
        ),
        status => ApiError::new(status, "bad_body", r.body_text()),
    })?;
    let bad_manifest = |message| ApiError::new(StatusCode::BAD_REQUEST, "bad_manifest", message);
    let Query(query) = query.map_err(|r| {
        bad_manifest(format!(
            "{}; expected ?store=STORE&prefix=PREFIX[&limits={{\"call_time_ms\":50}}]",
            r.body_text()
        ))
    })?;
    let limits = query
        .limits
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| {
            bad_manifest(format!(
                "limits must be a JSON object of [limits] keys: {e}"
            ))
        })?
        .unwrap_or_default();
    let manifest = Manifest {
        store: query.store,
        prefix: query.prefix,
        prefixes: query
            .prefixes
            .map(|p| p.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        sha256: None,
        reuse_steps: query.reuse_steps.unwrap_or(0),
        reuse_audit: query
            .reuse_audit
            .unwrap_or_else(crate::participants::folder::default_reuse_audit),
        limits,
    };
    let registry = coordinator.registry().clone();
    // Compiling takes a while: keep it off the async workers.
    let deployed =
        tokio::task::spawn_blocking(move || registry.deploy(&name, manifest, &body)).await;
    let participant = deployed.expect("the deploy task does not panic")?;
    Ok(Json(Listed::from(&*participant)).into_response())
}

/// Removes a deployed participant.
#[utoipa::path(
    delete,
    path = "/v1/participants/{name}",
    tag = "participants",
    params(("name" = String, Path, description = "The participant's name")),
    responses(
        (status = 200, description = "Removed", body = openapi::ServiceStatus),
        (status = 400, description = "`bad_participant_name`", body = openapi::ErrorBody),
        (status = 404, description = "`unknown_participant`: no deployed participant of that name", body = openapi::ErrorBody),
        (status = 409, description = "`deploy_disabled`, `configured_in_file`", body = openapi::ErrorBody),
        (status = 500, description = "`deploy_failed`: the deploy folder could not be written", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["deploy"])),
)]
async fn remove(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let registry = coordinator.registry().clone();
    let removed = tokio::task::spawn_blocking(move || registry.remove(&name)).await;
    removed.expect("the removal task does not panic")?;
    Ok(openapi::ServiceStatus::of("removed").into_response())
}

/// An error answer: `{"error": {"code", "message"[, "id"]}}` with its
/// status, and the header it needs, if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    /// The transaction an `outcome_unknown` names.
    id: Option<String>,
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: String) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message,
            id: None,
            header: None,
        }
    }

    fn with_header(mut self, name: HeaderName, value: &'static str) -> ApiError {
        self.header = Some((name, HeaderValue::from_static(value)));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = openapi::ErrorBody {
            error: openapi::ErrorDetail {
                code: self.code,
                message: self.message,
                id: self.id,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<TxnError> for ApiError {
    fn from(e: TxnError) -> ApiError {
        let status = match e {
            TxnError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            TxnError::InFlight { .. } => StatusCode::CONFLICT,
            TxnError::Store(_) | TxnError::OutcomeUnknown { .. } | TxnError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut error = ApiError::new(status, e.code(), e.to_string());
        match e {
            TxnError::OutcomeUnknown { id, .. } => error.id = Some(id),
            TxnError::Overloaded { .. } => {
                error = error.with_header(RETRY_AFTER, OVERLOADED_RETRY_AFTER_S);
            }
            _ => {}
        }
        error
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> ApiError {
        let status = match e {
            DeployError::BadName(_) | DeployError::BadManifest(_) => StatusCode::BAD_REQUEST,
            DeployError::Unknown(_) => StatusCode::NOT_FOUND,
            DeployError::Disabled | DeployError::ConfiguredInFile(_) => StatusCode::CONFLICT,
            DeployError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            DeployError::InvalidComponent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "operations",
    responses((status = 200, description = "Up", body = openapi::ServiceStatus)),
)]
async fn health() -> Json<openapi::ServiceStatus> {
    openapi::ServiceStatus::of("ok")
}

/// Ready when the host is not shutting down and every store answers and
/// keeps its writes durable (see `store::durability`): a store whose
/// settings changed since the start takes the host out of rotation, naming
/// what to set.
#[utoipa::path(
    get,
    path = "/v1/ready",
    tag = "operations",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = openapi::ServiceStatus),
        (status = 503, description = "`{\"status\":\"draining\"}` while shutting down, or `{\"status\":\"not_ready\",\"stores\":[{store, error}]}`", body = openapi::ServiceStatus),
    ),
)]
async fn ready(State(coordinator): State<Arc<Coordinator>>) -> Response {
    if coordinator.draining() {
        let body = openapi::ServiceStatus::of("draining");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let durability = coordinator.durability();
    let checks = futures::future::join_all(coordinator.stores().map(|s| async move {
        let checked = match s.ping().await {
            Ok(()) => s.check_durability(durability).await,
            Err(e) => Err(e.to_string()),
        };
        (s.name().to_owned(), checked)
    }))
    .await;
    let down: Vec<_> = checks
        .into_iter()
        .filter_map(|(store, r)| r.err().map(|error| openapi::StoreDown { store, error }))
        .collect();
    if down.is_empty() {
        openapi::ServiceStatus::of("ready").into_response()
    } else {
        let body = openapi::ServiceStatus {
            status: "not_ready".to_owned(),
            stores: Some(down),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
