//! The HTTP/JSON API.
//!
//! | route                     | what                                        |
//! |---------------------------|---------------------------------------------|
//! | `POST /v1/transactions`   | run a transaction; answers its outcome      |
//! | `GET /v1/transactions?state=&limit=&cursor=` | transactions holding locks or records (see `txn::inspect`) |
//! | `GET /v1/transactions?idempotency_key=K` | the transaction of a client's key |
//! | `GET /v1/transactions/{id}` | committed, aborted or in doubt            |
//! | `POST /v1/transactions/{id}/resolve` | finish it now (see `txn::resolve`) |
//! | `GET /v1/locks?store=&limit=&cursor=` | locked keys, mode, holder, lease |
//! | `GET /v1/participants`    | participants, versions, broken deploys      |
//! | `GET /v1/participants/{name}` | one, with kept versions and history     |
//! | `PUT /v1/participants/{name}?store=&prefix=&limits=` | deploy a component (the body) |
//! | `POST /v1/participants/{name}/rollback` | the previous version, current again |
//! | `DELETE /v1/participants/{name}` | remove a deployed participant        |
//! | `GET /v1/health`          | the process is up                           |
//! | `GET /v1/ready`           | every store answers, with durable settings  |
//! | `GET /metrics`            | Prometheus metrics (see `metrics`)          |
//! | `GET /openapi.json`       | this API as an OpenAPI 3.1 document         |
//! | `GET /console`            | the web console (see [`console`]), open     |
//!
//! With tokens configured, every route but health, readiness and this
//! document needs a bearer token with one of its scopes (see [`auth`]):
//! `401 unauthorized`, `403 forbidden` otherwise.
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
//! `bad_idempotency_key`; for listings `bad_query`, `bad_cursor`,
//! `unknown_store`), 404 `unknown_transaction` for a lookup, 409
//! `in_flight` while a first request with the same idempotency key runs
//! (with `Retry-After`), 413 for a body over the limit, 503 for a store
//! failure (`store_unavailable`: nothing was applied, send it again;
//! `outcome_unknown`: look the id up later) and for a host at its bounds
//! (`overloaded`, with `Retry-After`: nothing was applied, send it again
//! shortly).
//!
//! Deploys answer the new version (`200`), or `400` (`bad_participant_name`,
//! `bad_manifest`), `403` (`forbidden`: the token may not deploy that
//! participant, or to that store), `404` (`unknown_participant`), `409`
//! (`deploy_disabled`, `configured_in_file`, `no_previous_version`), `413`
//! (`component_too_large`), `422` (`invalid_component`: does not compile,
//! is not a component of the participant world, or imports what it may
//! not).
//!
//! Every request gets one line in the log at info when it is answered
//! (target `redstage::access`; see [`access_log`]), or when its client
//! goes away first.

pub mod auth;
mod console;
pub mod openapi;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tracing::Instrument;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::participants::folder::Manifest;
use crate::participants::{DeployError, Deployer, Detail, Listed, Listing};
use crate::txn::inspect::{LockPage, TxnPage};
use crate::txn::resolve::Resolution;
use crate::txn::types::{Lookup, LookupStatus, Status, TxnRequest, TxnResponse};
use crate::txn::{Coordinator, TxnError};
use auth::Caller;

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
        .route_layer(tower::layer::layer_fn(NoteRoute))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(tokens, edge))
        .with_state(coordinator)
}

/// What every request passes through, outermost first: [`access_log`],
/// [`json_errors`], [`auth::require`]. One layer rather than three: each
/// layer costs a request a boxed future and a clone of the service inside
/// it, which under load came to several microseconds per request.
async fn edge(
    State(tokens): State<Arc<auth::Tokens>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    access_log(request, |request| async move {
        json_errors(auth::require(&tokens, request, next).await).await
    })
    .await
}

/// Every route, each registered with its OpenAPI operation (the
/// `#[utoipa::path]` on its handler), so that the router serves exactly what
/// [`openapi::document`] lists.
fn routes(component_bytes_max: usize) -> OpenApiRouter<Arc<Coordinator>> {
    let deploys = OpenApiRouter::new()
        .routes(routes!(deploy, remove))
        .layer(DefaultBodyLimit::max(component_bytes_max));
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(submit, list))
        .routes(routes!(lookup))
        .routes(routes!(resolve))
        .routes(routes!(locks))
        .routes(routes!(participants))
        .routes(routes!(participant))
        .routes(routes!(rollback))
        .merge(deploys)
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
async fn json_errors(response: Response) -> Response {
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

/// The id of the request being served, for handlers that name it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The route an answer was given by (its template, `/v1/transactions/{id}`),
/// for the access log.
#[derive(Debug, Clone)]
struct Route(MatchedPath);

/// What an answer was about, for the access log: the transaction and what
/// became of it (`committed`, `aborted`, `in_doubt`, an error's code).
#[derive(Debug, Clone, Default)]
struct Outcome {
    txn: Option<String>,
    outcome: Option<String>,
    /// An abort's code.
    code: Option<String>,
}

/// Puts the matched route's template in the answer, for [`access_log`]: a
/// layer on every route, since only a route knows its template. A plain
/// service rather than `from_fn`, which would box a future and clone the
/// route's service for every request.
#[derive(Debug, Clone)]
struct NoteRoute<S>(S);

impl<S> tower::Service<axum::extract::Request> for NoteRoute<S>
where
    S: tower::Service<axum::extract::Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Noted<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        Noted {
            answer: self.0.call(request),
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's answer, with the route noted on it when it comes.
    struct Noted<F> {
        #[pin]
        answer: F,
        route: Option<MatchedPath>,
    }
}

impl<F, E> Future for Noted<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.answer.poll(cx))?;
        if let Some(route) = this.route.take() {
            response.extensions_mut().insert(Route(route));
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// Names every request and logs it once. The id is the client's
/// `x-request-id` when it sends a usable one, else a new UUID; it is on the
/// answer, whatever it is, and on every log line of the request (its
/// `request` span), the transaction's included.
///
/// Each request gets one line at info, target `redstage::access`: method,
/// route, status, duration, request id, token name, and the transaction
/// and its outcome when the request is about one. A client that goes away
/// before its answer gets a line too, with status 499 (the request's
/// transaction, if any, runs to its end: see [`submit`]).
async fn access_log<F, A>(mut request: axum::extract::Request, inner: F) -> Response
where
    F: FnOnce(axum::extract::Request) -> A,
    A: Future<Output = Response>,
{
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
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut pending = Pending {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        id,
        started: std::time::Instant::now(),
        answered: false,
    };
    let mut response = inner(request).instrument(span).await;
    pending.answered = true;
    pending.log(&response);
    let value = HeaderValue::from_str(&pending.id).expect("a request id is visible ASCII");
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

/// A request being served, logged when answered, or when dropped unanswered
/// (its client went away and the server dropped its handler).
struct Pending {
    method: String,
    path: String,
    id: String,
    started: std::time::Instant,
    answered: bool,
}

/// The status logged for a request whose client went away first (as nginx
/// logs it).
const CLIENT_GONE: u16 = 499;

impl Pending {
    fn log(&self, response: &Response) {
        let route = response.extensions().get::<Route>().map(|r| r.0.as_str());
        let token = response
            .extensions()
            .get::<auth::TokenName>()
            .map(|t| t.0.as_str());
        let outcome = response
            .extensions()
            .get::<Outcome>()
            .cloned()
            .unwrap_or_default();
        self.line(response.status().as_u16(), route, token, &outcome);
    }

    fn line(&self, status: u16, route: Option<&str>, token: Option<&str>, outcome: &Outcome) {
        tracing::info!(
            target: "redstage::access",
            parent: None,
            method = %self.method,
            route = %route.unwrap_or(&self.path),
            status,
            us = self.started.elapsed().as_micros() as u64,
            request = %self.id,
            token = %token.unwrap_or("-"),
            txn = %outcome.txn.as_deref().unwrap_or("-"),
            outcome = %outcome.outcome.as_deref().unwrap_or("-"),
            code = %outcome.code.as_deref().unwrap_or("-"),
            "{} {} {status}",
            self.method,
            route.unwrap_or(&self.path),
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            let outcome = Outcome {
                outcome: Some("client_gone".into()),
                ..Outcome::default()
            };
            self.line(CLIENT_GONE, None, None, &outcome);
        }
    }
}

/// `json` as an answer, noting what it was about for the access log.
fn answer<T: serde::Serialize>(json: T, outcome: Outcome) -> Response {
    let mut response = Json(json).into_response();
    response.extensions_mut().insert(outcome);
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
        (status = 409, description = "`in_flight`: a first request with the same idempotency key is still running; send it again after `Retry-After`", body = openapi::ErrorBody,
            headers(("retry-after" = u32, description = "Seconds until a retry can succeed: until the first request's locks' leases or its claim's lease end"))),
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
    // Boxed first: the transaction's future is several kilobytes, which
    // spawning would otherwise copy more than once.
    let run = Box::pin(async move { coordinator.run(request).await }.in_current_span());
    let run = tokio::spawn(run);
    let response = run.await.expect("a transaction task does not panic")?;
    let outcome = Outcome {
        txn: Some(response.id.clone()),
        outcome: Some(status_name(response.status).into()),
        code: response.abort.as_ref().map(|a| a.code.clone()),
    };
    Ok(answer(response, outcome))
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Committed => "committed",
        Status::Aborted => "aborted",
    }
}

/// The query of `GET /v1/transactions`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only transactions in this state.
    state: Option<LookupStatus>,
    /// Rows at most (1 to 1000; 100 when absent).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the page before.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Instead of a listing: the transaction a request with this
    /// idempotency key ran, or runs (at most one row, none when the key is
    /// unknown or past its retention, or its transaction is not in `state`;
    /// never a `next_cursor`).
    #[param(min_length = 1)]
    idempotency_key: Option<String>,
}

/// Transactions that hold locks or records: in doubt (locks held, no
/// decision), committed or aborted (their records, while kept), a page at
/// a time; or the one an idempotency key ran. A page never costs Redis
/// more than a few bounded `SCAN` pages: follow `next_cursor` until there
/// is none.
#[utoipa::path(
    get,
    path = "/v1/transactions",
    tag = "transactions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of transactions; `next_cursor` while there are more", body = TxnPage),
        (status = 400, description = "`bad_query` (an unknown state or parameter, a limit out of range), `bad_cursor` (not a cursor of this listing), `bad_idempotency_key` (not 1 to 256 bytes)", body = openapi::ErrorBody),
        (status = 503, description = "`store_unavailable`: a store did not answer; `store_error`: it answered what the protocol does not expect", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["read"]), ("bearer" = ["submit"])),
)]
async fn list(
    State(coordinator): State<Arc<Coordinator>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|r| {
        bad_query(
            r,
            "state=in_doubt|committed|aborted&limit=N&cursor=C, or idempotency_key=K",
        )
    })?;
    let limit = crate::txn::inspect::check_limit(query.limit)?;
    if let Some(key) = &query.idempotency_key {
        let found = coordinator
            .by_idempotency_key(key)
            .await?
            .filter(|t| query.state.is_none_or(|s| s == t.state));
        let outcome = Outcome {
            txn: found.as_ref().map(|t| t.id.clone()),
            outcome: found.as_ref().map(|t| t.state.name().to_owned()),
            code: None,
        };
        let page = TxnPage {
            transactions: found.into_iter().collect(),
            next_cursor: None,
        };
        return Ok(answer(page, outcome));
    }
    let page = coordinator
        .list_transactions(query.state, limit, query.cursor.as_deref())
        .await?;
    Ok(answer(page, Outcome::default()))
}

/// A query the route cannot take: `bad_query`, saying what it takes.
fn bad_query(rejection: QueryRejection, expected: &str) -> ApiError {
    let message = format!("{}; expected ?{expected}", rejection.body_text());
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// Finishes a transaction now, by the protocol's own rules: rolls it
/// forward if it is decided committed; otherwise fences it (writes
/// `aborted`, code `recovered`, where its commit point would write, so that
/// it can no longer commit, whether or not its lease has ended) and rolls
/// it back. A read-only transaction's locks are left while its lease runs.
/// Answers what it did on each store. Safe to repeat.
#[utoipa::path(
    post,
    path = "/v1/transactions/{id}/resolve",
    tag = "transactions",
    params(("id" = String, Path, description = "The transaction id")),
    responses(
        (status = 200, description = "What was done: the decision acted on (found, or `made` here) and the action on each store; a store that failed is `failed` with its error (send it again)", body = Resolution),
        (status = 404, description = "`unknown_transaction`: not an id, or no record and no lock of it", body = openapi::ErrorBody),
        (status = 503, description = "`store_unavailable`: a store did not answer; `store_error`: it answered what the protocol does not expect", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["submit"]), ("bearer" = ["deploy"])),
)]
async fn resolve(
    State(coordinator): State<Arc<Coordinator>>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
    Extension(request): Extension<RequestId>,
) -> Result<Response, ApiError> {
    let token = caller.map_or_else(|| "none".to_owned(), |c| format!("`{}`", c.name));
    let by = format!(
        "POST /v1/transactions/{{id}}/resolve (token {token}, request {}) on {}",
        request.0,
        crate::txn::resolve::host()
    );
    // On a task of its own, like a transaction: a client that goes away
    // does not cut the resolution short.
    let run =
        tokio::spawn(async move { coordinator.resolve(&id, &by, false).await.map(|r| (id, r)) });
    let (id, resolution) = run
        .await
        .expect("a resolution does not panic")
        .map_err(TxnError::from)?;
    let Some(resolution) = resolution else {
        return Err(unknown_transaction(&id));
    };
    let outcome = Outcome {
        txn: Some(resolution.id.clone()),
        outcome: resolution.decision.map(|d| status_name(d).to_owned()),
        code: None,
    };
    Ok(answer(resolution, outcome))
}

/// The query of `GET /v1/locks`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LocksQuery {
    /// Only this store's locks.
    store: Option<String>,
    /// Rows at most (1 to 1000; 100 when absent).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the page before.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Locked keys, one row per key and holder: mode, holder, its primary,
/// lease left. A page at a time, as `GET /v1/transactions`.
#[utoipa::path(
    get,
    path = "/v1/locks",
    tag = "transactions",
    params(LocksQuery),
    responses(
        (status = 200, description = "A page of locks; `next_cursor` while there are more", body = LockPage),
        (status = 400, description = "`bad_query`, `bad_cursor`, `unknown_store`", body = openapi::ErrorBody),
        (status = 503, description = "`store_unavailable`: a store did not answer; `store_error`: it answered what the protocol does not expect", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["read"])),
)]
async fn locks(
    State(coordinator): State<Arc<Coordinator>>,
    query: Result<Query<LocksQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|r| bad_query(r, "store=S&limit=N&cursor=C"))?;
    let limit = crate::txn::inspect::check_limit(query.limit)?;
    let page = coordinator
        .list_locks(query.store.as_deref(), limit, query.cursor.as_deref())
        .await?;
    Ok(answer(page, Outcome::default()))
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
    security(("bearer" = ["read"]), ("bearer" = ["submit"])),
)]
async fn lookup(
    State(coordinator): State<Arc<Coordinator>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(found) = coordinator.lookup(&id).await? else {
        return Err(unknown_transaction(&id));
    };
    let outcome = Outcome {
        txn: Some(found.id.clone()),
        outcome: Some(found.status.name().to_owned()),
        code: found.abort.as_ref().map(|a| a.code.clone()),
    };
    Ok(answer(found, outcome))
}

/// `404 unknown_transaction` for `id`, saying why there may be nothing.
fn unknown_transaction(id: &str) -> ApiError {
    let message = match crate::txn::is_txn_id(id) {
        false => format!("{id:?} is not a transaction id (ids are UUIDs, as responses name them)"),
        true => format!(
            "no record and no lock of transaction {id}: it never ran here, it was read-only, or \
             its record is past its retention (txn.answered_retention_s once answered, \
             txn.record_retention_s otherwise)"
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, "unknown_transaction", message)
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
    let locks = futures::future::join_all(coordinator.stores().map(|s| async move {
        let (counts, first) = futures::join!(s.lock_counts(), s.first_entry());
        let (held, expired) = counts.ok()?;
        let started = first
            .ok()?
            .and_then(|f| f.entry.ok())
            .map_or(0, |e| crate::txn::inspect::started_at_ms(&e.txn));
        let oldest = crate::now_ms().saturating_sub(started);
        Some(crate::metrics::Locks {
            store: s.name(),
            held,
            expired,
            oldest: match started {
                0 => std::time::Duration::ZERO,
                _ => std::time::Duration::from_millis(oldest),
            },
        })
    }))
    .await;
    let ready = store_checks(&coordinator).await;
    let registry = coordinator.registry();
    let participants = registry.all();
    let scraped = crate::metrics::Scraped {
        ready: ready.iter().map(|(s, r)| (*s, r.is_ok())).collect(),
        store_errors: coordinator
            .stores()
            .map(|s| {
                let (unavailable, protocol) = s.errors();
                (s.name(), unavailable, protocol)
            })
            .collect(),
        locks: locks.into_iter().flatten().collect(),
        in_flight: coordinator.in_flight(),
        slots: {
            let runtime = registry.runtime();
            let all = runtime.settings().instance_pool as usize;
            (all, all.saturating_sub(runtime.slots_free()))
        },
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

/// One participant: its current version (digest, contract, limits, store,
/// prefix), the versions kept for rollbacks and its deploy history.
#[utoipa::path(
    get,
    path = "/v1/participants/{name}",
    tag = "participants",
    params(("name" = String, Path, description = "The participant's name", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")),
    responses(
        (status = 200, description = "The participant", body = Detail),
        (status = 404, description = "`unknown_participant`: none of that name runs here", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["read"])),
)]
async fn participant(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let registry = coordinator.registry().clone();
    let detail = tokio::task::spawn_blocking(move || registry.detail(&name).ok_or(name)).await;
    match detail.expect("reading the deploy folder does not panic") {
        Ok(detail) => Ok(Json(detail).into_response()),
        Err(name) => Err(DeployError::Unknown(name).into()),
    }
}

/// Makes the version deployed before the current one current again (the
/// versions are a stack: each rollback goes one further back), as a deploy
/// of it would: checked, written to the deploy folder, used by every
/// transaction that starts afterwards.
#[utoipa::path(
    post,
    path = "/v1/participants/{name}/rollback",
    tag = "participants",
    params(("name" = String, Path, description = "The participant's name", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")),
    responses(
        (status = 200, description = "The version now running", body = Listed),
        (status = 400, description = "`bad_participant_name`, `bad_manifest` (the earlier version no longer fits: its store is gone, its prefix taken)", body = openapi::ErrorBody),
        (status = 404, description = "`unknown_participant`", body = openapi::ErrorBody),
        (status = 409, description = "`deploy_disabled`, `configured_in_file`, `no_previous_version`", body = openapi::ErrorBody),
        (status = 422, description = "`invalid_component`: the earlier version no longer loads (the limits changed)", body = openapi::ErrorBody),
        (status = 500, description = "`deploy_failed`: the deploy folder could not be written", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["deploy"])),
)]
async fn rollback(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    let registry = coordinator.registry().clone();
    let by = deployer(caller);
    let rolled = tokio::task::spawn_blocking(move || registry.rollback(&name, &by)).await;
    let participant = rolled.expect("the rollback task does not panic")?;
    Ok(Json(Listed::from(&*participant)).into_response())
}

/// Who deploys: the token's name and what it may deploy.
fn deployer(caller: Option<Extension<Caller>>) -> Deployer {
    caller.map_or_else(Deployer::default, |Extension(c)| Deployer {
        name: Some(c.name),
        participants: c.participants,
        stores: c.stores,
    })
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
    params(("name" = String, Path, description = "The participant's name", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"), DeployQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component"),
    responses(
        (status = 200, description = "The new version, running", body = Listed),
        (status = 400, description = "`bad_participant_name`, `bad_manifest`, `bad_body`", body = openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token may not deploy this participant, or to this store (its `participants`, `stores`)", body = openapi::ErrorBody),
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
    caller: Option<Extension<Caller>>,
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
    let by = deployer(caller);
    // Compiling takes a while: keep it off the async workers.
    let deployed =
        tokio::task::spawn_blocking(move || registry.deploy(&name, manifest, &body, &by)).await;
    let participant = deployed.expect("the deploy task does not panic")?;
    Ok(Json(Listed::from(&*participant)).into_response())
}

/// Removes a deployed participant.
#[utoipa::path(
    delete,
    path = "/v1/participants/{name}",
    tag = "participants",
    params(("name" = String, Path, description = "The participant's name", pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")),
    responses(
        (status = 200, description = "Removed", body = openapi::ServiceStatus),
        (status = 400, description = "`bad_participant_name`", body = openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the token may not deploy this participant", body = openapi::ErrorBody),
        (status = 404, description = "`unknown_participant`: no deployed participant of that name", body = openapi::ErrorBody),
        (status = 409, description = "`deploy_disabled`, `configured_in_file`", body = openapi::ErrorBody),
        (status = 500, description = "`deploy_failed`: the deploy folder could not be written", body = openapi::ErrorBody),
    ),
    security(("bearer" = ["deploy"])),
)]
async fn remove(
    State(coordinator): State<Arc<Coordinator>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    let registry = coordinator.registry().clone();
    let by = deployer(caller);
    let removed = tokio::task::spawn_blocking(move || registry.remove(&name, &by)).await;
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
        let outcome = Outcome {
            txn: self.id.clone(),
            outcome: Some(self.code.clone()),
            code: None,
        };
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
        response.extensions_mut().insert(outcome);
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
            TxnError::InFlight { retry_after, .. } => {
                let seconds = crate::txn::seconds(retry_after).to_string();
                let value = HeaderValue::from_str(&seconds).expect("digits are a header value");
                error.header = Some((RETRY_AFTER, value));
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
            DeployError::Forbidden(_) => StatusCode::FORBIDDEN,
            DeployError::Unknown(_) => StatusCode::NOT_FOUND,
            DeployError::Disabled
            | DeployError::ConfiguredInFile(_)
            | DeployError::NoPreviousVersion(_) => StatusCode::CONFLICT,
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
    let down: Vec<_> = store_checks(&coordinator)
        .await
        .into_iter()
        .filter_map(|(store, r)| {
            r.err().map(|error| openapi::StoreDown {
                store: store.to_owned(),
                error,
            })
        })
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

/// Every store's readiness: it answers `PING`, and keeps its writes as the
/// config's durability demands (see `store::durability`); the error says
/// what to set.
async fn store_checks(coordinator: &Coordinator) -> Vec<(&str, Result<(), String>)> {
    let durability = coordinator.durability();
    futures::future::join_all(coordinator.stores().map(|s| async move {
        let checked = match s.ping().await {
            Ok(()) => s.check_durability(durability).await,
            Err(e) => Err(e.to_string()),
        };
        (s.name(), checked)
    }))
    .await
}
