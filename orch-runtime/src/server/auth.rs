//! Bearer tokens: read-only, worker and admin, compared in constant time.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GET endpoints only.
    Read,
    /// The worker protocol only ([`WORKER_ROUTES`]): lease, heartbeat, complete and fail
    /// tasks, and list the queues. For workers that live elsewhere: such a token can neither
    /// read instances nor change them.
    Worker,
    /// Everything.
    Admin,
}

/// The routes a [`Role::Worker`] token may call (method, route as the router spells it).
pub const WORKER_ROUTES: [(&str, &str); 5] = [
    ("POST", "/api/v1/tasks/lease"),
    ("POST", "/api/v1/tasks/{id}/heartbeat"),
    ("POST", "/api/v1/tasks/{id}/complete"),
    ("POST", "/api/v1/tasks/{id}/fail"),
    ("GET", "/api/v1/queues"),
];

/// Whether a worker token may call `method` on `route` (the matched route pattern; HEAD counts
/// as GET).
pub(crate) fn worker_may(method: &str, route: &str) -> bool {
    let method = if method == "HEAD" { "GET" } else { method };
    WORKER_ROUTES
        .iter()
        .any(|(m, r)| *m == method && *r == route)
}

#[derive(Clone)]
pub(crate) struct Token {
    name: String,
    secret: Vec<u8>,
    role: Role,
    /// Where the token was configured, for error messages (never the secret).
    source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("source", &self.source)
            .finish()
    }
}

impl Token {
    pub(crate) fn new(name: String, secret: String, role: Role) -> Token {
        let source = match role {
            Role::Admin => format!("HttpConfig::admin_token(\"{}\", ..)", name.escape_debug()),
            Role::Read => format!("HttpConfig::read_token(\"{}\", ..)", name.escape_debug()),
            Role::Worker => format!("HttpConfig::worker_token(\"{}\", ..)", name.escape_debug()),
        };
        Token {
            name,
            secret: secret.into_bytes(),
            role,
            source,
        }
    }
}

/// Longest accepted secret.
pub(crate) const MAX_SECRET: usize = 256;
/// Shortest accepted secret.
pub(crate) const MIN_SECRET: usize = 8;

fn padded(bytes: &[u8]) -> [u8; MAX_SECRET] {
    let mut out = [0u8; MAX_SECRET];
    let n = bytes.len().min(MAX_SECRET);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// Refuses empty names, names with spaces or control characters, and secrets that are not
/// 8 to 256 visible ASCII characters (a secret with a space could never be sent intact).
pub(crate) fn check_token(t: &Token) -> Result<(), String> {
    let at = &t.source;
    if t.name.is_empty() {
        return Err(format!(
            "{at}: the token has an empty name; name every token (it is recorded as the actor)"
        ));
    }
    if t.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{at}: the token name `{}` contains a space or control character; use a plain \
             name such as `ops`",
            t.name.escape_debug()
        ));
    }
    if t.secret.len() < MIN_SECRET || t.secret.len() > MAX_SECRET {
        return Err(format!(
            "{at}: the secret of token `{}` is {} bytes; use {MIN_SECRET} to {MAX_SECRET} bytes \
             (a long random string)",
            t.name,
            t.secret.len()
        ));
    }
    if !t.secret.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{at}: the secret of token `{}` contains a space, a control or a non-ASCII \
             character; a bearer token must be visible ASCII (e.g. hex or base64url)",
            t.name
        ));
    }
    Ok(())
}

/// Refuses one secret configured twice (in both lists, or in the builder and the environment):
/// the caller would silently get one of the two roles.
pub(crate) fn check_distinct(tokens: &[Token]) -> Result<(), String> {
    for (i, a) in tokens.iter().enumerate() {
        if let Some(b) = tokens[i + 1..].iter().find(|b| b.secret == a.secret) {
            return Err(format!(
                "{} and {} have the same secret (as `{}`, {:?} and `{}`, {:?}); give every \
                 token its own secret",
                a.source, b.source, a.name, a.role, b.name, b.role
            ));
        }
    }
    Ok(())
}

/// Parses `name:secret,name2:secret2` from the environment variable `var` (unset or empty:
/// no tokens).
pub(crate) fn env_tokens(var: &str, role: Role) -> Result<Vec<Token>, String> {
    match std::env::var(var) {
        Ok(raw) => parse_tokens(var, &raw, role),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{var} is not valid UTF-8; it must be a comma-separated list of name:secret pairs"
        )),
    }
}

/// Parses the text of `var`: `name:secret` entries separated by commas, each checked by
/// [`check_token`]. Errors name the variable and the entry's position, never the secret.
pub(crate) fn parse_tokens(var: &str, raw: &str, role: Role) -> Result<Vec<Token>, String> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("{var} entry {}", i + 1);
            let entry = entry.trim();
            let Some((name, secret)) = entry.split_once(':') else {
                return Err(format!(
                    "{at} {}; {var} must be a comma-separated list of name:secret pairs \
                     (e.g. ops:4f9c...,ci:81ab...)",
                    if entry.is_empty() {
                        "is empty".to_string()
                    } else {
                        "has no `:` between the name and the secret".to_string()
                    }
                ));
            };
            let mut t = Token::new(name.to_string(), secret.to_string(), role);
            t.source = at;
            check_token(&t)?;
            Ok(t)
        })
        .collect()
}

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
}

#[derive(Clone)]
pub(crate) struct Auth {
    tokens: std::sync::Arc<Vec<Token>>,
}

/// Why a request was refused.
pub(crate) enum Refused {
    Missing,
    Unknown,
}

impl Auth {
    pub(crate) fn new(tokens: Vec<Token>) -> Auth {
        Auth {
            tokens: std::sync::Arc::new(tokens),
        }
    }

    pub(crate) fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller named by the request's bearer token (everyone is the admin `local` when no
    /// token is configured, which only a loopback server allows).
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<Caller, Refused> {
        if self.tokens.is_empty() {
            return Ok(Caller {
                name: "local".into(),
                role: Role::Admin,
            });
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .ok_or(Refused::Missing)?;
        // Compare against every token, over a fixed width with the lengths compared apart,
        // so the time taken depends neither on which token matched nor on their lengths.
        let presented = presented.as_bytes();
        if presented.len() > MAX_SECRET {
            return Err(Refused::Unknown);
        }
        let wide = padded(presented);
        let mut found: Option<&Token> = None;
        for t in self.tokens.iter() {
            let same = padded(&t.secret).ct_eq(&wide)
                & (t.secret.len() as u64).ct_eq(&(presented.len() as u64));
            if bool::from(same) {
                found = Some(t);
            }
        }
        found
            .map(|t| Caller {
                name: t.name.clone(),
                role: t.role,
            })
            .ok_or(Refused::Unknown)
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme is matched
/// case-insensitively (RFC 9110, section 11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(v);
        if let Ok(v) = axum::http::HeaderValue::from_bytes(&value) {
            h.insert(axum::http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn only_the_exact_secret_matches_whatever_its_length() {
        let auth = Auth::new(vec![
            Token::new("ops".into(), "s3cret-admin".into(), Role::Admin),
            Token::new("viewer".into(), "r3ad-only-token".into(), Role::Read),
        ]);
        let who = |v: &[u8]| auth.check(&bearer(v)).ok().map(|c| (c.name, c.role));
        assert_eq!(who(b"s3cret-admin"), Some(("ops".into(), Role::Admin)));
        assert_eq!(who(b"r3ad-only-token"), Some(("viewer".into(), Role::Read)));
        // Prefixes, extensions and padding-like suffixes are refused.
        assert_eq!(who(b"s3cret-admi"), None);
        assert_eq!(who(b"s3cret-admin2"), None);
        assert_eq!(who(b"s3cret-admin\x01"), None);
        assert_eq!(who(&[b'a'; 300]), None);
        assert!(matches!(
            auth.check(&HeaderMap::new()),
            Err(Refused::Missing)
        ));
    }

    #[test]
    fn a_worker_token_may_call_the_worker_protocol_only() {
        for (m, r) in WORKER_ROUTES {
            assert!(worker_may(m, r), "{m} {r}");
        }
        assert!(worker_may("HEAD", "/api/v1/queues"));
        assert!(!worker_may("GET", "/api/v1/tasks/lease"));
        assert!(!worker_may("POST", "/api/v1/queues"));
        assert!(!worker_may("GET", "/api/v1/instances"));
        assert!(!worker_may("POST", "/api/v1/instances/{id}/cancel"));
        assert!(!worker_may("GET", "/metrics"));
    }

    #[test]
    fn short_long_and_unnamed_tokens_are_refused() {
        let t = |name: &str, secret: &str| Token::new(name.into(), secret.into(), Role::Read);
        assert!(check_token(&t("ops", "12345678")).is_ok());
        assert!(check_token(&t("ops", "1234567")).is_err());
        assert!(check_token(&t("", "12345678")).is_err());
        assert!(check_token(&t("ops", &"x".repeat(257))).is_err());
    }
}
