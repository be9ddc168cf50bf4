//! The HTTP side: one client per run, and the errors a command can end with (each with its
//! exit code).

use reqwest::{Response, StatusCode, Url};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// How long one request may take before the server counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command stopped; `code()` is the process exit code.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong in a way clap cannot see (bad `--input` JSON, unreadable file).
    Usage(String),
    /// No answer from the server at `url`.
    Unreachable { url: String, cause: String },
    /// 401/403: no token, an unknown token, or a read-only token on a mutating call.
    Auth { message: String, hint: String },
    /// The server refused the request (4xx other than auth) or failed it (5xx); `code` is the
    /// contract's machine code (`not_found`, `invalid_input`, …) when the body had one.
    Refused {
        message: String,
        code: Option<String>,
    },
    /// The request went through but the operation did not succeed (an instance that ended
    /// other than `completed`, a file that could not be written).
    Failed(String),
    /// The server answered something that is not what the contract describes.
    BadResponse(String),
}

impl CliError {
    /// 0 success, 1 refused or failed, 2 usage, 3 unreachable, 4 auth.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Auth { .. } => 4,
            CliError::Refused { .. } | CliError::Failed(_) | CliError::BadResponse(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Refused { message: m, .. } | CliError::Failed(m) => {
                write!(f, "error: {m}")
            }
            CliError::Unreachable { url, cause } => write!(
                f,
                "error: cannot reach the orch server at {url}: {cause}\n\
                 hint: is it running? point orch at it with --url or ORCH_URL"
            ),
            CliError::Auth { message, hint } => write!(f, "error: {message}\nhint: {hint}"),
            CliError::BadResponse(m) => write!(f, "error: unexpected answer from the server: {m}"),
        }
    }
}

/// A client of one server's `/api/v1`.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// `url` is the server's root (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, CliError> {
        let base = Url::parse(url).map_err(|e| {
            CliError::Usage(format!(
                "--url {url:?} is not a URL ({e}); expected e.g. http://127.0.0.1:8080"
            ))
        })?;
        if base.scheme() != "http" {
            return Err(CliError::Usage(format!(
                "--url {url}: only http:// is supported (put a TLS-terminating proxy in front \
                 of the server and reach it over http, or tunnel it)"
            )));
        }
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(CliError::Usage(format!(
                "--url {url:?} has no host; expected e.g. http://127.0.0.1:8080"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("orch-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Failed(format!("cannot set up the HTTP client: {e}")))?;
        let token = token.filter(|t| !t.is_empty());
        Ok(Client { http, base, token })
    }

    /// Whether a token will be sent (for hints).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The URL of `/api/v1/<segments…>`, each segment percent-encoded.
    pub fn api(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// GET a JSON document.
    pub async fn get(&self, url: Url) -> Result<Value, CliError> {
        let response = self.send(self.http.get(url.clone()), &url).await?;
        json_body(response).await
    }

    /// GET a text document (a drawing).
    pub async fn get_text(&self, url: Url) -> Result<String, CliError> {
        let response = self.send(self.http.get(url.clone()), &url).await?;
        response
            .text()
            .await
            .map_err(|e| CliError::BadResponse(format!("cannot read the body: {e}")))
    }

    /// POST a JSON body, read a JSON answer.
    pub async fn post(&self, url: Url, body: &Value) -> Result<Value, CliError> {
        let response = self
            .send(self.http.post(url.clone()).json(body), &url)
            .await?;
        json_body(response).await
    }

    /// PUT a JSON body, read a JSON answer.
    pub async fn put(&self, url: Url, body: &Value) -> Result<Value, CliError> {
        let response = self
            .send(self.http.put(url.clone()).json(body), &url)
            .await?;
        json_body(response).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<Response, CliError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let (message, code) = error_message(status, &body, url);
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::Auth {
                message,
                hint: if self.has_token() {
                    "the token was not accepted: check --token / ORCH_TOKEN".into()
                } else {
                    "this server requires a token: pass --token or set ORCH_TOKEN".into()
                },
            },
            StatusCode::FORBIDDEN => CliError::Auth {
                message,
                hint: "the token is read-only: this command needs an admin token \
                       (--token / ORCH_TOKEN)"
                    .into(),
            },
            _ => CliError::Refused { message, code },
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        let cause = if e.is_timeout() {
            format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
        } else {
            root_cause(&e)
        };
        CliError::Unreachable {
            url: self.base.as_str().trim_end_matches('/').to_string(),
            cause,
        }
    }
}

/// The server's message and code from a `{"error": {"code", "message"}}` body, or a
/// description of whatever else came back.
fn error_message(status: StatusCode, body: &str, url: &Url) -> (String, Option<String>) {
    if let Ok(value) = serde_json::from_str::<Value>(body)
        && let Some(error) = value.get("error")
        && let Some(message) = error.get("message").and_then(Value::as_str)
    {
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_string);
        return (message.to_string(), code);
    }
    let snippet: String = body.trim().chars().take(200).collect();
    let path = url.path();
    let message = if snippet.is_empty() {
        format!("the server answered {status} to {path}")
    } else {
        format!("the server answered {status} to {path}: {snippet}")
    };
    (message, None)
}

async fn json_body(response: Response) -> Result<Value, CliError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CliError::BadResponse(format!("cannot read the body: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
        CliError::BadResponse(format!("not JSON ({e}): {snippet}"))
    })
}

/// The innermost cause ("Connection refused (os error 111)"), which says more than reqwest's
/// outer "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
