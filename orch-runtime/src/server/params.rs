//! Request text into typed values: query parameters, search filters, times, durations,
//! cursors and path segments. Every function here takes text straight from the request, so
//! each one refuses bad text with a clean [`ApiError`] and never panics (property-tested
//! below over arbitrary strings).

use super::api::{ApiError, ApiResult, body_unread, kind_of, list, only_fields};
use crate::limits::{MAX_ATTR_KEY_BYTES, MAX_ATTR_VALUE_BYTES, MAX_ID_LEN};
use crate::runtime::Runtime;
use crate::store::{Cursor, Millis, Query, Status};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde_json::Value;
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

/// At most this many `attr.<key>` filters in one search or bulk filter.
pub const MAX_ATTR_FILTERS: usize = 20;

/// Largest page of a search.
pub const MAX_PAGE: usize = 500;

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are the API's JSON errors.

/// One path segment (an instance id, a workflow name), percent-decoded. A segment that does not
/// decode to UTF-8 (`%ff`) is a `bad_request` with the JSON error body.
pub(crate) struct Segment(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(Segment(s)),
            Err(rej) => Err(path_error(&rej)),
        }
    }
}

/// Several path segments (`(name, id)`), percent-decoded, with the same rejection as
/// [`Segment`].
pub(crate) struct Segments<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(Segments(s)),
            Err(rej) => Err(path_error(&rej)),
        }
    }
}

fn path_error(rej: &PathRejection) -> ApiError {
    match rej {
        PathRejection::FailedToDeserializePathParams(e) => ApiError::bad_request(format!(
            "bad path segment: {}; percent-encode ids as UTF-8 (e.g. `order-7%2F12`)",
            e.body_text()
        )),
        other => {
            tracing::error!(error = %other.body_text(), "path parameters missing");
            ApiError::internal()
        }
    }
}

/// The query string as `(key, value)` pairs, percent-decoded, in order. A query string that
/// does not decode is a `bad_request` with the JSON error body.
pub(crate) struct Pairs(pub(crate) Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Pairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|q| Pairs(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("bad query string: {}", e.body_text()))
            })
    }
}

/// The query string as the typed parameters `T` (a struct that denies unknown fields). A query
/// string that does not fit is a `bad_request` with the JSON error body, naming the field.
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("bad query string: {}", e.body_text()))
            })
    }
}

/// The JSON request body as the typed request `T` (a struct that denies unknown fields; an
/// empty body counts as `{}`). A body that does not fit is a `bad_request` with the JSON error
/// body, naming the field; one over [`MAX_BODY`](super::MAX_BODY) is a `payload_too_large`.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_unread)?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(Body).map_err(|e| {
            // serde quotes an unknown field whole: keep the message short whatever was sent.
            let e: String = e.to_string().chars().take(300).collect();
            ApiError::bad_request(format!("bad request body: {e}"))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Times and durations.

/// Parses a time parameter: milliseconds since the epoch, RFC 3339, or an age like `24h`
/// meaning that long before `now`.
pub(crate) fn parse_time(raw: &str, now: Millis) -> Result<Millis, String> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(ms) = rfc3339(raw) {
        return ms.ok_or_else(|| format!("`{}` is before 1970", shown(raw)));
    }
    if let Ok(age) = humantime::parse_duration(raw) {
        return Ok(now.saturating_sub(age.as_millis().min(i64::MAX as u128) as Millis));
    }
    Err(format!(
        "`{}` is not a time: use RFC 3339 (2026-11-26T08:00:00Z), an age such as 15m, 24h \
         or 7d, or milliseconds since the epoch",
        shown(raw)
    ))
}

/// RFC 3339 (also with a `+02:00` offset, a space or lower-case `t`/`z`, or a date alone):
/// `Some(None)` for a time before 1970, `None` for text that is not such a time. humantime
/// reads the UTC form; the offset is applied here.
///
/// RFC 3339 is ASCII: anything else is refused up front, so every byte index below is a
/// character boundary (slicing inside a multi-byte character used to panic here).
fn rfc3339(raw: &str) -> Option<Option<Millis>> {
    let raw = raw.trim();
    if !raw.is_ascii() {
        return None;
    }
    let mut text = raw.to_ascii_uppercase();
    if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        text.push_str("T00:00:00Z"); // a date alone: its start, UTC
    }
    let (base, offset_ms) = match split_offset(&text) {
        Some((base, offset_ms)) => (format!("{base}Z"), offset_ms),
        None => (text, 0),
    };
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    Some(
        t.duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .and_then(|ms| ms.checked_sub(offset_ms))
            .filter(|ms| *ms >= 0),
    )
}

/// Splits an ASCII `…T12:00:00+02:00` into the time and the offset in milliseconds (`None`
/// when the text does not end in a `±hh:mm` offset after a date and time).
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let b = text.as_bytes();
    let at = b.len().checked_sub(6)?;
    let (base, off) = (text.get(..at)?, b.get(at..)?);
    if !(base.contains('T') || base.contains(' ')) {
        return None;
    }
    let sign = match off[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digit = |i: usize| off[i].is_ascii_digit().then(|| i64::from(off[i] - b'0'));
    if off[3] != b':' {
        return None;
    }
    let h = digit(1)? * 10 + digit(2)?;
    let m = digit(4)? * 10 + digit(5)?;
    (h < 24 && m < 60).then_some((base, sign * (h * 3_600_000 + m * 60_000)))
}

/// A positive duration parameter (`15m`, `24h`, `7d`), in milliseconds.
pub(crate) fn duration_param(name: &str, raw: &str) -> ApiResult<i64> {
    let d = humantime::parse_duration(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "{name}: `{}` is not a duration ({e}); use e.g. 15m, 24h or 7d",
            shown(raw)
        ))
    })?;
    let ms = d.as_millis().min(i64::MAX as u128) as i64;
    if ms <= 0 {
        return Err(ApiError::bad_request(format!("{name} must be positive")));
    }
    Ok(ms)
}

/// `raw` as quoted in an error message: at most 100 characters.
pub(crate) fn shown(raw: &str) -> String {
    const MAX: usize = 100;
    if raw.chars().count() <= MAX {
        raw.to_string()
    } else {
        let head: String = raw.chars().take(MAX).collect();
        format!("{head}…")
    }
}

// ---------------------------------------------------------------------------------------------
// Search parameters.

const SEARCH_PARAMS: &[&str] = &[
    "workflow",
    "status",
    "created_after",
    "created_before",
    "updated_after",
    "id_prefix",
    "attr.<key>",
    "attr[<key>]",
    "parent",
    "limit",
    "cursor",
];

/// A comma-separated status list (empty items ignored).
pub(crate) fn parse_statuses(raw: &str) -> ApiResult<Vec<Status>> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown status `{}`; statuses are {}",
                    shown(s),
                    Status::ALL.map(Status::as_str).join(", ")
                ))
            })
        })
        .collect()
}

/// An attribute value in a filter: JSON when it parses as JSON, else a string.
pub(crate) fn attr_value(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => v.to_string(),
        Err(_) => Value::String(raw.to_string()).to_string(),
    }
}

/// The attribute key of a search parameter: `attr.<key>`, or `attr[<key>]` as OpenAPI's
/// `deepObject` style writes it.
fn attr_key(param: &str) -> Option<&str> {
    if let Some(key) = param.strip_prefix("attr.") {
        return Some(key);
    }
    param.strip_prefix("attr[")?.strip_suffix(']')
}

/// One `attr.<key>=<value>` filter, checked against the attribute caps.
pub(crate) fn attr_filter(key: &str, raw_value: &str) -> ApiResult<(String, String)> {
    if key.is_empty() || key.len() > MAX_ATTR_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "attribute filter `attr.{}`: the key must be 1 to {MAX_ATTR_KEY_BYTES} bytes, got {}",
            shown(key),
            key.len()
        )));
    }
    let value = attr_value(raw_value);
    if key.contains('\0') || value.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "attribute filter `attr.{}`: it contains the character U+0000 (NUL), which no \
             attribute can hold; remove it",
            shown(key)
        )));
    }
    if value.len() > MAX_ATTR_VALUE_BYTES {
        return Err(ApiError::bad_request(format!(
            "attribute filter `attr.{}`: the value is {} bytes of JSON, over the limit of \
             {MAX_ATTR_VALUE_BYTES} (no attribute can hold a longer value)",
            shown(key),
            value.len()
        )));
    }
    Ok((key.to_string(), value))
}

/// A `next_cursor` as given back: `<created_at ms>_<id>`.
pub(crate) fn parse_cursor(raw: &str) -> ApiResult<Cursor> {
    raw.split_once('_')
        .and_then(|(t, id)| {
            Some(Cursor {
                created_at: t.parse().ok()?,
                id: id.to_string(),
            })
        })
        .filter(|c| !c.id.is_empty() && c.id.len() <= MAX_ID_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "bad cursor `{}`: pass the `next_cursor` of the previous page unchanged",
                shown(raw)
            ))
        })
}

pub(crate) fn cursor_of(rec: &crate::store::InstanceRecord) -> String {
    format!("{}_{}", rec.created_at, rec.id)
}

/// A page size: 1 to [`MAX_PAGE`].
pub(crate) fn parse_limit(raw: &str) -> ApiResult<usize> {
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be 1 to {MAX_PAGE}, got `{}`",
                shown(raw)
            ))
        })
}

/// An id-like filter value (`id_prefix`, `parent`): at most [`MAX_ID_LEN`] bytes.
fn id_param(name: &str, raw: &str) -> ApiResult<String> {
    if raw.len() > MAX_ID_LEN {
        return Err(ApiError::bad_request(format!(
            "{name} is {} bytes; instance ids are at most {MAX_ID_LEN}",
            raw.len()
        )));
    }
    Ok(raw.to_string())
}

pub(crate) fn check_workflow(rt: &Runtime, name: &str) -> ApiResult<()> {
    rt.definition(name).map(|_| ()).map_err(ApiError::from)
}

/// A search query from URL parameters; `extra` names further parameters the caller handles.
/// Statuses are deduplicated; more than [`MAX_ATTR_FILTERS`] attribute filters are refused.
pub(crate) fn query_from_params(
    rt: &Runtime,
    params: &[(String, String)],
    extra: &[&str],
) -> ApiResult<(Query, HashMap<String, String>)> {
    let now = rt.inner.clock.now_ms();
    let mut q = Query {
        limit: 50,
        ..Default::default()
    };
    let mut rest = HashMap::new();
    let time = |name: &str, v: &str| {
        parse_time(v, now).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
    };
    for (k, v) in params {
        match k.as_str() {
            "workflow" => {
                check_workflow(rt, v)?;
                q.workflow = Some(v.clone());
            }
            "status" => {
                for s in parse_statuses(v)? {
                    if !q.statuses.contains(&s) {
                        q.statuses.push(s);
                    }
                }
            }
            "created_after" => q.created_after = Some(time("created_after", v)?),
            "created_before" => q.created_before = Some(time("created_before", v)?),
            "updated_after" => q.updated_after = Some(time("updated_after", v)?),
            "id_prefix" => q.id_prefix = Some(id_param("id_prefix", v)?).filter(|p| !p.is_empty()),
            "parent" => q.parent = Some(id_param("parent", v)?),
            "limit" => q.limit = parse_limit(v)?,
            "cursor" => q.after = Some(parse_cursor(v)?),
            k if attr_key(k).is_some() => {
                if q.attributes.len() == MAX_ATTR_FILTERS {
                    return Err(ApiError::bad_request(format!(
                        "more than {MAX_ATTR_FILTERS} attribute filters; narrow the search with \
                         fewer `attr.<key>` conditions"
                    )));
                }
                let (key, value) = attr_filter(attr_key(k).unwrap_or_default(), v)?;
                q.attributes.push((key, value));
            }
            k if extra.contains(&k) => {
                rest.insert(k.to_string(), v.clone());
            }
            k => {
                let mut known: Vec<&str> = SEARCH_PARAMS.to_vec();
                known.extend_from_slice(extra);
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`; known: {}",
                    shown(k),
                    list(&known)
                )));
            }
        }
    }
    Ok((q, rest))
}

/// Whether a bulk filter's condition says nothing: absent, null, `""`, `[]` or `{}`.
/// Whether filter field `field` is given as nothing: `null`, or an empty value of the field's
/// own type (`""`, `[]` for `status`, `{}` for `attr`). An empty value of another type is not
/// blank: it is a wrong type, refused below.
fn is_blank(field: &str, v: &Value) -> bool {
    match (field, v) {
        (_, Value::Null) => true,
        (_, Value::String(s)) => s.is_empty(),
        ("status", Value::Array(a)) => a.is_empty(),
        ("attr", Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// A search filter given as a JSON object (bulk operations). An empty string, list or object
/// counts as absent, and a filter with no condition left is refused: it would act on every
/// instance.
pub(crate) fn query_from_json(rt: &Runtime, filter: Option<&Value>) -> ApiResult<Query> {
    let Some(filter) = filter else {
        return Err(ApiError::bad_request(
            "missing `filter`: a bulk operation needs a filter object, e.g. \
             {\"filter\": {\"workflow\": \"checkout\", \"status\": [\"failed\"]}}",
        ));
    };
    let Value::Object(f) = filter else {
        return Err(ApiError::bad_request(format!(
            "`filter` must be an object, got {}",
            kind_of(filter)
        )));
    };
    only_fields(
        f,
        &[
            "workflow",
            "status",
            "created_after",
            "created_before",
            "updated_after",
            "id_prefix",
            "attr",
            "parent",
        ],
    )?;
    if f.iter().all(|(k, v)| is_blank(k, v)) {
        return Err(ApiError::bad_request(
            "`filter` has no condition (empty strings, lists and objects count as absent), \
             which would act on every instance; name at least one condition (e.g. \
             {\"status\": [\"failed\"]})",
        ));
    }
    let mut params = Vec::new();
    for (k, v) in f.iter().filter(|(k, v)| !is_blank(k, v)) {
        match (k.as_str(), v) {
            ("status", Value::Array(items)) => {
                for s in items {
                    let s = s.as_str().ok_or_else(|| {
                        ApiError::bad_request("`filter.status` must be a list of strings")
                    })?;
                    params.push(("status".to_string(), s.to_string()));
                }
            }
            ("attr", Value::Object(attrs)) => {
                if attrs.len() > MAX_ATTR_FILTERS {
                    return Err(ApiError::bad_request(format!(
                        "`filter.attr` has {} keys; at most {MAX_ATTR_FILTERS}",
                        attrs.len()
                    )));
                }
                for (ak, av) in attrs {
                    if ak.is_empty() {
                        return Err(ApiError::bad_request(
                            "`filter.attr` has an empty key; keys are attribute names",
                        ));
                    }
                    params.push((format!("attr.{ak}"), av.to_string()));
                }
            }
            ("attr", other) => {
                return Err(ApiError::bad_request(format!(
                    "`filter.attr` must be an object of key → value, got {}",
                    kind_of(other)
                )));
            }
            (k, Value::String(s)) => params.push((k.to_string(), s.clone())),
            (k @ ("created_after" | "created_before" | "updated_after"), Value::Number(n)) => {
                params.push((k.to_string(), n.to_string()))
            }
            (k, other) => {
                return Err(ApiError::bad_request(format!(
                    "`filter.{k}` must be {}, got {}",
                    if k == "status" {
                        "a list of strings"
                    } else {
                        "a string"
                    },
                    kind_of(other)
                )));
            }
        }
    }
    let (q, _) = query_from_params(rt, &params, &[])?;
    Ok(q)
}

/// The `format` of a graph: `svg` (default), `mermaid` or `dot`.
pub(crate) fn graph_format(params: &[(String, String)]) -> ApiResult<&'static str> {
    let mut format = "svg";
    for (k, v) in params {
        match k.as_str() {
            "format" => {
                format = ["svg", "mermaid", "dot"]
                    .into_iter()
                    .find(|f| f == v)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown graph format `{}`; use svg, mermaid or dot",
                            shown(v)
                        ))
                    })?
            }
            k => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}`; known: `format`",
                    shown(k)
                )));
            }
        }
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(raw: &str) -> Option<Millis> {
        parse_time(raw, 1_000_000_000_000).ok()
    }

    #[test]
    fn times_in_every_accepted_form() {
        assert_eq!(ms("2026-11-26T08:00:00Z"), Some(1_795_680_000_000));
        assert_eq!(ms("2026-11-26T10:00:00+02:00"), Some(1_795_680_000_000));
        assert_eq!(ms("2026-11-26t08:00:00z"), Some(1_795_680_000_000));
        assert_eq!(ms("2026-11-26"), Some(1_795_651_200_000));
        assert_eq!(ms("1h"), Some(1_000_000_000_000 - 3_600_000));
        assert_eq!(ms("42"), Some(42));
        assert!(ms("1969-12-31T00:00:00Z").is_none());
        assert!(ms("2026-11-26T08:00:00+24:00").is_none());
    }

    #[test]
    fn text_with_multibyte_characters_is_not_a_time() {
        for raw in [
            "ééééa",
            "2026-11-26T08:00:0é",
            "ééé+02:00",
            "T€€€€€€",
            "2026-11-26T08:00é00:00",
        ] {
            let err = parse_time(raw, 0).expect_err(raw);
            assert!(err.contains("is not a time"), "{err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn time_parsing_never_panics(raw in any::<String>(), now in any::<i64>()) {
            let _ = parse_time(&raw, now);
        }

        #[test]
        fn time_like_text_never_panics(raw in "[0-9T:+\\-. Zzé€]{0,40}") {
            let _ = parse_time(&raw, 0);
        }

        #[test]
        fn offsets_shift_the_time(h in 0i64..24, m in 0i64..60, plus in any::<bool>()) {
            let sign = if plus { '+' } else { '-' };
            let t = ms(&format!("2026-11-26T12:00:00{sign}{h:02}:{m:02}")).expect("a time");
            let utc = ms("2026-11-26T12:00:00Z").expect("a time");
            let off = (h * 60 + m) * 60_000;
            prop_assert_eq!(t, if plus { utc - off } else { utc + off });
        }

        #[test]
        fn durations_statuses_cursors_limits_and_formats_never_panic(raw in any::<String>()) {
            let _ = duration_param("window", &raw);
            let _ = parse_statuses(&raw);
            let _ = parse_cursor(&raw);
            let _ = parse_limit(&raw);
            let _ = attr_filter(&raw, &raw);
            let _ = graph_format(&[("format".into(), raw.clone())]);
            let _ = graph_format(&[(raw.clone(), "svg".into())]);
            let _ = shown(&raw);
        }

        #[test]
        fn cursors_round_trip(created_at in any::<i64>(), id in "[A-Za-z0-9._:-]{1,128}") {
            let c = parse_cursor(&format!("{created_at}_{id}")).expect("a cursor");
            prop_assert_eq!(c.created_at, created_at);
            prop_assert_eq!(c.id, id);
        }

        #[test]
        fn status_lists_parse_or_name_the_bad_item(raw in "[a-z, ]{0,60}") {
            match parse_statuses(&raw) {
                Ok(list) => prop_assert!(list.len() <= raw.split(',').count()),
                Err(e) => prop_assert!(e.message().contains("unknown status")),
            }
        }
    }
}
