//! Bearer tokens: read-only and admin, compared in constant time.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GET endpoints only.
    Read,
    /// Everything.
    Admin,
}

#[derive(Clone)]
pub(crate) struct Token {
    name: String,
    secret: Vec<u8>,
    role: Role,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

impl Token {
    pub(crate) fn new(name: String, secret: String, role: Role) -> Token {
        Token {
            name,
            secret: secret.into_bytes(),
            role,
        }
    }
}

/// Parses `name:secret,name2:secret2` from the environment variable `var`.
pub(crate) fn env_tokens(var: &str, role: Role) -> Result<Vec<Token>, String> {
    let Ok(raw) = std::env::var(var) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((name, secret)) if !name.is_empty() && secret.len() >= 8 => {
                Ok(Token::new(name.to_string(), secret.to_string(), role))
            }
            Some((name, _)) if !name.is_empty() => Err(format!(
                "{var}: the secret of token `{name}` is shorter than 8 characters; use a long \
                 random secret"
            )),
            _ => Err(format!(
                "{var} must be a comma-separated list of name:secret pairs, got an entry \
                 without a name or a `:`"
            )),
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
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Refused::Missing)?;
        // Compare against every token so the time taken does not depend on which matched.
        let mut found: Option<&Token> = None;
        for t in self.tokens.iter() {
            if bool::from(t.secret.as_slice().ct_eq(presented.as_bytes())) {
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
