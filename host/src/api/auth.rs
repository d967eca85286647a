//! Bearer tokens with scopes.
//!
//! Each route needs one of its scopes: `read` to see (listings, lookups,
//! metrics; a `submit` token may look its own transactions up too),
//! `submit` to run transactions, `deploy` to deploy, roll back and remove
//! participants, and `submit` or `deploy` to resolve a transaction. A
//! `deploy` token may be held to some participants and stores
//! (`participants`, `stores`; `*` for all, the default).
//! `GET /v1/health`, `GET /v1/ready` and `GET /openapi.json` stay open
//! (load balancers probe them). A request sends
//! `Authorization: Bearer <token>`; no token or an unknown one is
//! `401 unauthorized`, a token without the route's scope `403 forbidden`.
//!
//! | scopes             | routes                                              |
//! |--------------------|-----------------------------------------------------|
//! | `submit`           | `POST /v1/transactions`                             |
//! | `read` or `submit` | `GET /v1/transactions`, `GET /v1/transactions/{id}` |
//! | `submit` or `deploy` | `POST /v1/transactions/{id}/resolve`              |
//! | `deploy`           | `PUT`, `DELETE /v1/participants/{name}`, `POST /v1/participants/{name}/rollback` |
//! | `read`             | every other route: `GET /v1/locks`, `GET /v1/participants[/{name}]`, `GET /metrics` |
//! Tokens are compared by their SHA-256 digests, in constant time, all of
//! them every time: neither the answer's timing nor its content tells how
//! much of a token was right, or which token was close.
//!
//! Without any token configured every route is open, and `serve` refuses a
//! non-loopback address unless told `--insecure`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;

/// The shortest token accepted: 16 bytes (128 bits if random) keep a token
/// out of reach of guessing.
pub const TOKEN_BYTES_MIN: usize = 16;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Run transactions, look them up, resolve them.
    Submit,
    /// Deploy, roll back and remove participants; resolve transactions.
    Deploy,
    /// See: list and look up transactions, locks and participants, read
    /// metrics.
    Read,
}

const SUBMIT: &[Scope] = &[Scope::Submit];
const DEPLOY: &[Scope] = &[Scope::Deploy];
const READ: &[Scope] = &[Scope::Read];
const LOOK: &[Scope] = &[Scope::Read, Scope::Submit];
const ACT: &[Scope] = &[Scope::Submit, Scope::Deploy];

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Deploy => "deploy",
            Scope::Read => "read",
        }
    }

    /// The scopes of which a request needs one; `None` for the open
    /// routes.
    pub fn of(method: &Method, path: &str) -> Option<&'static [Scope]> {
        let participant = path.strip_prefix("/v1/participants/");
        let transaction = path.strip_prefix("/v1/transactions/");
        match (method, path) {
            (_, "/v1/health" | "/v1/ready" | "/openapi.json") => None,
            // The console's pages hold no data; what they fetch needs a token.
            (_, p) if super::console::is_console(p) => None,
            (&Method::POST, "/v1/transactions") => Some(SUBMIT),
            (&Method::POST, _) if transaction.is_some_and(|t| t.ends_with("/resolve")) => Some(ACT),
            (_, "/v1/transactions") => Some(LOOK),
            _ if transaction.is_some() => Some(LOOK),
            (&Method::PUT | &Method::DELETE, _) if participant.is_some() => Some(DEPLOY),
            (&Method::POST, _) if participant.is_some_and(|p| p.ends_with("/rollback")) => {
                Some(DEPLOY)
            }
            // Listings, metrics, and paths that are no route: any token.
            _ => Some(READ),
        }
    }

    /// `scopes` for a message: "`read` or `submit`".
    pub fn names(scopes: &[Scope]) -> String {
        let names: Vec<String> = scopes.iter().map(|s| format!("`{}`", s.name())).collect();
        names.join(" or ")
    }
}

/// The token a request was let in with, for the handlers (who may act on
/// which participants) and the access log. Absent when the server has no
/// tokens.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    /// The participants it may deploy; `None`: all.
    pub participants: Option<Vec<String>>,
    /// The stores it may deploy to; `None`: all.
    pub stores: Option<Vec<String>>,
}

/// One token of `[[auth.tokens]]`: the secret itself (`token`), the
/// environment variable that holds it (`token_env`) or the file that does
/// (`token_file`: a Docker or Kubernetes secret; a final newline is not
/// part of the token), and its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for logs.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    pub scopes: Vec<Scope>,
    /// The participants a `deploy` token may deploy, roll back and remove
    /// (`*`: all, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<String>>,
    /// The stores a `deploy` token may deploy participants to (`*`: all,
    /// the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<String>>,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

/// The tokens a server accepts, by digest.
#[derive(Debug, Default)]
pub struct Tokens(Vec<Token>);

#[derive(Debug)]
struct Token {
    digest: [u8; 32],
    scopes: Vec<Scope>,
    caller: Caller,
}

impl Tokens {
    /// No token: every route open.
    pub fn none() -> Arc<Tokens> {
        Arc::default()
    }

    /// The configured tokens, with those named by `token_env` read from the
    /// environment and by `token_file` from their files; an error names the
    /// first bad one.
    pub fn from_config(config: &AuthConfig) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let what = format!("auth.tokens[{i}] (`{}`)", t.name);
            let secret = match (&t.token, &t.token_env, &t.token_file) {
                (Some(token), None, None) => token.clone(),
                (None, Some(var), None) => std::env::var(var)
                    .map_err(|_| format!("{what}: the environment variable {var} is not set"))?,
                (None, None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
                _ => {
                    return Err(format!(
                        "{what}: set one of `token`, `token_env` and `token_file`"
                    ));
                }
            };
            if secret.len() < TOKEN_BYTES_MIN {
                return Err(format!(
                    "{what}: a token needs at least {TOKEN_BYTES_MIN} bytes"
                ));
            }
            if t.scopes.is_empty() {
                return Err(format!(
                    "{what}: give it scopes (`submit`, `deploy`, `read`)"
                ));
            }
            for (key, list) in [("participants", &t.participants), ("stores", &t.stores)] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    return Err(format!(
                        "{what}: `{key}` names none, so the token could deploy nothing; \
                         name some, or `*` for all"
                    ));
                }
            }
            let digest = Sha256::digest(secret.as_bytes()).into();
            if tokens.iter().any(|o: &Token| o.digest == digest) {
                return Err(format!("{what}: the same token is configured twice"));
            }
            tokens.push(Token {
                digest,
                scopes: t.scopes.clone(),
                caller: Caller {
                    name: t.name.clone(),
                    participants: t.participants.clone(),
                    stores: t.stores.clone(),
                },
            });
        }
        Ok(Tokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `header` (an `Authorization` value) grants one of `scopes`:
    /// the token's caller if it does.
    fn check(&self, header: Option<&[u8]>, scopes: &[Scope]) -> Result<&Caller, Refusal> {
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .ok_or(Refusal::Unauthorized("no `Authorization: Bearer` token"))?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for token in &self.0 {
            if constant_time_eq(&token.digest, &digest) {
                found = Some(token);
            }
        }
        let token = found.ok_or(Refusal::Unauthorized("an unknown token"))?;
        if scopes.iter().any(|s| token.scopes.contains(s)) {
            Ok(&token.caller)
        } else {
            Err(Refusal::Forbidden(token.caller.name.clone()))
        }
    }
}

enum Refusal {
    Unauthorized(&'static str),
    /// The token's name.
    Forbidden(String),
}

/// Equal digests, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Every request's check (inside the API's one layer): passes a request on
/// only if its token grants one of the route's scopes, with its [`Caller`]
/// in the request's extensions (and its name in the answer's, for the
/// access log).
pub async fn require(tokens: &Tokens, mut request: Request, next: Next) -> Response {
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let Some(scopes) = Scope::of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let (refusal, name) = match tokens.check(header, scopes) {
        Ok(caller) => {
            let name = TokenName(caller.name.clone());
            request.extensions_mut().insert(caller.clone());
            let mut response = next.run(request).await;
            response.extensions_mut().insert(name);
            return response;
        }
        Err(Refusal::Unauthorized(what)) => {
            let message = format!(
                "this route needs a token with the {} scope, and the request has {what}",
                Scope::names(scopes)
            );
            let error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .with_header(WWW_AUTHENTICATE, "Bearer");
            (error, None)
        }
        Err(Refusal::Forbidden(name)) => {
            let message = format!(
                "token `{name}` has not the {} scope this route needs",
                Scope::names(scopes)
            );
            let error = ApiError::new(StatusCode::FORBIDDEN, "forbidden", message);
            (error, Some(TokenName(name)))
        }
    };
    drain(request).await;
    let mut response = refusal.into_response();
    if let Some(name) = name {
        response.extensions_mut().insert(name);
    }
    response
}

/// The most of a refused request's body that is read (and dropped) before
/// the refusal is sent, and for how long at most: a client still sending a
/// component when the refusal comes would otherwise meet a closed
/// connection (a broken pipe) instead of reading why. Past either bound
/// the connection is closed as before.
pub const REFUSED_BODY_DRAIN_BYTES: usize = 16 << 20;
pub const REFUSED_BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops the body of a refused request, within the bounds above.
async fn drain(request: Request) {
    use futures::StreamExt as _;
    let mut stream = request.into_body().into_data_stream();
    let read = async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > REFUSED_BODY_DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME, read).await;
}

/// The name of the token an answer was given to, for the access log.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let config: AuthConfig = toml::from_str(
            r#"
            [[tokens]]
            name = "shop"
            token = "0123456789abcdef-shop"
            scopes = ["submit"]
            [[tokens]]
            name = "ops"
            token = "0123456789abcdef-ops"
            scopes = ["deploy", "read"]
            "#,
        )
        .expect("parses");
        Tokens::from_config(&config).expect("valid")
    }

    #[test]
    fn scopes_follow_the_routes() {
        for (method, path, scopes) in [
            (Method::POST, "/v1/transactions", Some(SUBMIT)),
            (Method::GET, "/v1/transactions", Some(LOOK)),
            (Method::GET, "/v1/transactions/x", Some(LOOK)),
            (Method::POST, "/v1/transactions/x/resolve", Some(ACT)),
            (Method::GET, "/v1/locks", Some(READ)),
            (Method::PUT, "/v1/participants/x", Some(DEPLOY)),
            (Method::DELETE, "/v1/participants/x", Some(DEPLOY)),
            (Method::POST, "/v1/participants/x/rollback", Some(DEPLOY)),
            (Method::GET, "/v1/participants/x", Some(READ)),
            (Method::GET, "/v1/participants", Some(READ)),
            (Method::GET, "/metrics", Some(READ)),
            (Method::GET, "/v1/health", None),
            (Method::GET, "/v1/ready", None),
        ] {
            assert_eq!(Scope::of(&method, path), scopes, "{method} {path}");
        }
    }

    #[test]
    fn a_token_grants_its_scopes_only() {
        let tokens = tokens();
        let shop = Some(&b"Bearer 0123456789abcdef-shop"[..]);
        assert_eq!(
            tokens.check(shop, SUBMIT).map(|c| &*c.name).ok(),
            Some("shop")
        );
        assert!(tokens.check(shop, LOOK).is_ok());
        assert!(matches!(
            tokens.check(shop, DEPLOY),
            Err(Refusal::Forbidden(n)) if n == "shop"
        ));
        for header in [
            None,
            Some(&b"0123456789abcdef-shop"[..]),
            Some(&b"Bearer 0123456789abcdef-sho"[..]),
            Some(&b"Basic 0123456789abcdef-shop"[..]),
        ] {
            assert!(matches!(
                tokens.check(header, SUBMIT),
                Err(Refusal::Unauthorized(_))
            ));
        }
    }

    #[test]
    fn bad_token_configs_are_refused_naming_the_token() {
        for (toml, says) in [
            (
                r#"tokens = [{name = "a", token = "short", scopes = ["read"]}]"#,
                "at least 16 bytes",
            ),
            (
                r#"tokens = [{name = "a", token = "0123456789abcdefgh", scopes = []}]"#,
                "give it scopes",
            ),
            (
                r#"tokens = [{name = "a", scopes = ["read"]}]"#,
                "one of `token`, `token_env` and `token_file`",
            ),
            (
                r#"tokens = [{name = "a", token = "0123456789abcdefgh", token_file = "/x", scopes = ["read"]}]"#,
                "one of `token`, `token_env` and `token_file`",
            ),
            (
                r#"tokens = [{name = "a", token_file = "/nonexistent/redstage-token", scopes = ["read"]}]"#,
                "cannot read /nonexistent/redstage-token",
            ),
            (
                r#"tokens = [{name = "a", token_env = "REDSTAGE_TEST_NO_SUCH_VAR", scopes = ["read"]}]"#,
                "REDSTAGE_TEST_NO_SUCH_VAR is not set",
            ),
            (
                r#"tokens = [{name = "a", token = "0123456789abcdefgh", scopes = ["deploy"], stores = []}]"#,
                "`stores` names none",
            ),
        ] {
            let config: AuthConfig = toml::from_str(toml).expect("parses");
            let err = Tokens::from_config(&config).expect_err(toml);
            assert!(err.contains("`a`") && err.contains(says), "{err}");
        }
    }

    /// A secret mounted as a file, as Docker and Kubernetes do: the file
    /// holds the token, a final newline aside.
    #[test]
    fn a_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("shop-token");
        std::fs::write(&path, "0123456789abcdef-file\n").expect("write");
        let config = AuthConfig {
            tokens: vec![TokenConfig {
                name: "shop".into(),
                token: None,
                token_env: None,
                token_file: Some(path),
                scopes: vec![Scope::Submit],
                participants: None,
                stores: None,
            }],
        };
        let tokens = Tokens::from_config(&config).expect("valid");
        assert!(
            tokens
                .check(Some(b"Bearer 0123456789abcdef-file"), SUBMIT)
                .is_ok()
        );
        assert!(
            tokens
                .check(Some(b"Bearer 0123456789abcdef-file\n"), SUBMIT)
                .is_err()
        );
    }
}
