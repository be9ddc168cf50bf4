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

/// Refuses empty names and secrets shorter than 8 or longer than 256 bytes.
pub(crate) fn check_token(t: &Token) -> Result<(), String> {
    if t.name.is_empty() {
        return Err(
            "a token has an empty name; name every token (it is recorded as the actor)".into(),
        );
    }
    if t.secret.len() < MIN_SECRET || t.secret.len() > MAX_SECRET {
        return Err(format!(
            "the secret of token `{}` is {} bytes; use {MIN_SECRET} to {MAX_SECRET} bytes (a long \
             random string)",
            t.name,
            t.secret.len()
        ));
    }
    Ok(())
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
            Some((name, secret)) if !name.is_empty() => {
                let t = Token::new(name.to_string(), secret.to_string(), role);
                check_token(&t).map_err(|e| format!("{var}: {e}"))?;
                Ok(t)
            }
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
    fn short_long_and_unnamed_tokens_are_refused() {
        let t = |name: &str, secret: &str| Token::new(name.into(), secret.into(), Role::Read);
        assert!(check_token(&t("ops", "12345678")).is_ok());
        assert!(check_token(&t("ops", "1234567")).is_err());
        assert!(check_token(&t("", "12345678")).is_err());
        assert!(check_token(&t("ops", &"x".repeat(257))).is_err());
    }
}
