//! The web console at `/console`: pages for an operator's first questions
//! (what runs, what is in doubt and since when, which keys are locked, what
//! each participant and store is), drawn in the browser from the same HTTP
//! API a client uses, with the same token (the read scope to see; submit or
//! deploy to resolve, deploy to roll back).
//!
//! ```text
//!  GET /console            index.html  the shell: navigation, a token field
//!  GET /console/app.js     app.js      every page, rendered from /v1/* and /metrics
//!  GET /console/app.css    app.css
//! ```
//!
//! The assets are compiled into the binary (`include_str!`): nothing is
//! built at run time, and the pages load nothing from another origin (the
//! `Content-Security-Policy` says so to the browser). The routes are open,
//! like `/openapi.json`: they hold no data; every request the pages make
//! for data carries the token the operator enters, kept in the tab's
//! `sessionStorage`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The console's assets: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    ),
];

/// Scripts, styles and requests from this origin only; no frames, no
/// plugins, no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's (open: see the module essay).
pub fn is_console(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// The console's routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(async || asset("index.html")))
        .route("/console/", get(async || asset("index.html")))
        .route(
            "/console/{name}",
            get(async |Path(name): Path<String>| asset(&name)),
        )
}

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        let message = format!("no console asset `{name}`; the console is at /console");
        return super::ApiError::new(StatusCode::NOT_FOUND, "not_found", message).into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_shell_names_is_served() {
        let index = ASSETS[0].2;
        for (name, _, _) in &ASSETS[1..] {
            assert!(index.contains(&format!("/console/{name}")), "{name}");
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("app.js").status(), StatusCode::OK);
    }

    #[test]
    fn the_pages_load_nothing_from_another_origin() {
        for (name, _, body) in ASSETS {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = body
                    .lines()
                    .filter(|l| l.contains(scheme) && !l.contains("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{name} names another origin: {hits:?}");
            }
        }
    }
}
