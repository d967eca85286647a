//! The API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! It is not written by hand: every route is registered through
//! `utoipa_axum::routes!` from the `#[utoipa::path]` on its handler (see
//! `super::routes`), which puts the route in the router and its operation
//! in the document together. This module adds what no handler says: the
//! bearer scheme, and the `401`/`403` every route behind a scope may give.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{OpenApi as _, ToSchema};

/// The name of the security scheme operations refer to.
pub const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "redstage",
        description = "Atomic, serializable transactions across Redis stores, with each \
                       participant's business logic a sandboxed WebAssembly component.\n\n\
                       Every error answer is `{\"error\": {\"code\", \"message\"[, \"id\"]}}` \
                       with a stable `code`; every answer carries `x-request-id`."
    ),
    tags(
        (name = "transactions", description = "Run transactions, look them up, list and resolve them, list locks"),
        (name = "participants", description = "List, deploy, roll back and remove participants"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
    components(schemas(ErrorBody))
)]
struct Base;

/// The document's frame, before the routes add their operations.
pub(super) fn base() -> OpenApi {
    Base::openapi()
}

/// The whole document: the routes' operations in the frame, with the
/// bearer scheme and the answers of `auth::require` added.
pub fn document() -> &'static OpenApi {
    static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(|| {
        let mut document = super::routes(0).into_openapi();
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token of `[[auth.tokens]]`; each operation names the scope it needs. \
                 Without tokens configured, every route is open.",
            ))
            .build();
        document
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
        binary_body(&mut document, "/v1/participants/{name}");
        for item in document.paths.paths.values_mut() {
            for operation in operations(item) {
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    let unauthorized =
                        "`unauthorized`: no token, or not one of the configured tokens";
                    add_error(operation, "401", unauthorized);
                    let forbidden = "`forbidden`: the token lacks the scope this route needs";
                    add_error(operation, "403", forbidden);
                }
                let in_path = |p: &Parameter| p.parameter_in == ParameterIn::Path;
                if operation.parameters.iter().flatten().any(in_path) {
                    let bad = "`bad_request`: a path parameter that is not UTF-8";
                    add_error(operation, "400", bad);
                }
            }
        }
        document
    });
    &DOCUMENT
}

/// The document as served, with what `utoipa` cannot write: links from
/// the `id` a transaction's answer (or an `outcome_unknown` error) names to
/// the operations that take it, so that tools can follow a transaction
/// from its submission to its lookup and its resolution. (`utoipa` 5.5
/// writes a link's `operationId` as `operation_id`, which OpenAPI does not
/// know, so the links are added to the JSON.)
pub fn served() -> &'static serde_json::Value {
    static SERVED: LazyLock<serde_json::Value> = LazyLock::new(|| {
        let mut json = serde_json::to_value(document()).expect("the document serializes");
        let responses = &mut json["paths"]["/v1/transactions"]["post"]["responses"];
        for (status, from) in [
            ("200", "$response.body#/id"),
            ("503", "$response.body#/error/id"),
        ] {
            let link = |operation: &str, description: &str| {
                serde_json::json!({
                    "operationId": operation,
                    "parameters": {"id": from},
                    "description": description,
                })
            };
            if let Some(response) = responses.get_mut(status) {
                response["links"] = serde_json::json!({
                    "lookup": link("lookup", "What became of the transaction"),
                    "resolve": link("resolve", "Finish the transaction now"),
                });
            }
        }
        json
    });
    &SERVED
}

/// The body of `PUT path` as what it is, the bytes of a component, taken
/// whatever its media type says (`application/wasm`, or any other).
fn binary_body(document: &mut OpenApi, path: &str) {
    let Some(put) = document
        .paths
        .paths
        .get_mut(path)
        .and_then(|i| i.put.as_mut())
    else {
        return;
    };
    let Some(body) = put.request_body.as_mut() else {
        return;
    };
    let binary = || {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)));
        ContentBuilder::new().schema(Some(schema)).build()
    };
    body.content.clear();
    for media in ["application/wasm", "application/octet-stream"] {
        body.content.insert(media.to_owned(), binary());
    }
}

/// Lists an error answer of `operation`: a new `status` with the error
/// shape, or one more case in the description of the one listed.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(listed)) => {
            listed.description = format!("{}; {description}", listed.description);
        }
        _ => {
            let error_body = RefOr::Ref(Ref::from_schema_name("ErrorBody"));
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(error_body)).build(),
                )
                .build();
            operation
                .responses
                .responses
                .insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// The operations of a path item, whatever their methods.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
)]
pub(super) async fn serve() -> Json<&'static serde_json::Value> {
    Json(served())
}

/// Every error answer.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `malformed_json`, `outcome_unknown`, ...
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
    /// With `outcome_unknown`: the transaction to look up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `{"status": ...}` of health, readiness and removal.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ServiceStatus {
    /// `ok`, `ready`, `draining`, `not_ready`, `removed`.
    pub status: String,
    /// With `not_ready`: each store that failed its check, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<StoreDown>>,
}

impl ServiceStatus {
    /// `{"status": status}`.
    pub fn of(status: &str) -> Json<ServiceStatus> {
        Json(ServiceStatus {
            status: status.to_owned(),
            stores: None,
        })
    }
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct StoreDown {
    pub store: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;
    use crate::api::auth::Scope;

    /// The scope each operation names is the one `auth::require` enforces
    /// on its route, and the open routes name none.
    #[test]
    fn every_operation_names_the_scope_auth_requires() {
        for (path, item) in &document().paths.paths {
            // A concrete path for the templated ones.
            let concrete = path.replace("{id}", "x").replace("{name}", "x");
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
            ] {
                let Some(operation) = operation else { continue };
                let named = serde_json::to_value(&operation.security).unwrap();
                let named: Vec<&str> = named
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|alternative| alternative[BEARER][0].as_str())
                    .collect();
                let enforced: Vec<&str> = Scope::of(&method, &concrete)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.name())
                    .collect();
                assert_eq!(
                    named, enforced,
                    "{method} {path}: the document and auth disagree"
                );
            }
        }
    }
}
