//! The HTTP/JSON API.
//!
//! | route                     | what                                        |
//! |---------------------------|---------------------------------------------|
//! | `POST /v1/transactions`   | run a transaction; answers its outcome      |
//! | `GET /v1/transactions/{id}` | committed, aborted or in doubt            |
//! | `GET /v1/health`          | the process is up                           |
//! | `GET /v1/ready`           | every store answers                         |
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
//! `outcome_unknown`: look the id up later).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::txn::types::TxnRequest;
use crate::txn::{Coordinator, TxnError};

/// The largest request body accepted. Guards the service against memory
/// exhaustion by a client; far above any sane transaction.
pub const BODY_BYTES_MAX: usize = 4 << 20;

/// The service's routes over a coordinator.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/v1/transactions", post(submit))
        .route("/v1/transactions/{id}", get(lookup))
        .route(
            "/v1/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/v1/ready", get(ready))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(coordinator)
}

async fn submit(
    State(coordinator): State<Arc<Coordinator>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(rejection.status(), "bad_body", &rejection.body_text(), None);
        }
    };
    let request: TxnRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!(
                "{e}; expected {{\"steps\":[{{\"participant\":\"...\",\"input\":{{...}}}}],\"idempotency_key\":\"optional\"}}"
            );
            return error(StatusCode::BAD_REQUEST, "malformed_json", &message, None);
        }
    };
    match coordinator.run(request).await {
        Ok(response) => Json(response).into_response(),
        Err(e) => txn_error(&e),
    }
}

async fn lookup(State(coordinator): State<Arc<Coordinator>>, Path(id): Path<String>) -> Response {
    match coordinator.lookup(&id).await {
        Ok(Some(found)) => Json(found).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_transaction",
            &format!(
                "no record and no lock of transaction {id}: it never ran here, or its record is older than \
                 txn.record_retention_s"
            ),
            None,
        ),
        Err(e) => txn_error(&e),
    }
}

fn txn_error(e: &TxnError) -> Response {
    let status = match e {
        TxnError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        TxnError::InFlight { .. } => StatusCode::CONFLICT,
        TxnError::Store(_) | TxnError::OutcomeUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    let id = match e {
        TxnError::OutcomeUnknown { id, .. } => Some(id.as_str()),
        _ => None,
    };
    error(status, e.code(), &e.to_string(), id)
}

async fn ready(State(coordinator): State<Arc<Coordinator>>) -> Response {
    let checks = futures::future::join_all(coordinator.stores().map(|s| async move {
        (
            s.name().to_owned(),
            s.ping().await.map_err(|e| e.to_string()),
        )
    }))
    .await;
    let down: Vec<_> = checks
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| json!({"store": n, "error": e})))
        .collect();
    if down.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "stores": down})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &str, message: &str, id: Option<&str>) -> Response {
    let mut body = json!({"error": {"code": code, "message": message}});
    if let Some(id) = id {
        body["error"]["id"] = json!(id);
    }
    (status, Json(body)).into_response()
}
