//! Limits on what callers may hand the runtime. Exceeding one is refused and changes nothing.

use crate::error::Error;

/// Longest instance id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Largest serialized workflow input, signal payload or custom status: 1 MiB of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Longest cancel or terminate reason, in bytes (it is stored with the instance and in the
/// audit log).
pub const MAX_REASON_BYTES: usize = 1024;

/// Longest signal name, in bytes.
pub const MAX_SIGNAL_NAME_BYTES: usize = 128;

/// Longest attribute key (`orch::set_attribute`), in bytes.
pub const MAX_ATTR_KEY_BYTES: usize = 128;

/// Largest attribute value, in bytes of JSON.
pub const MAX_ATTR_VALUE_BYTES: usize = 4096;

/// Largest custom status (`orch::set_status`), in bytes of JSON: 64 KiB.
pub const MAX_CUSTOM_STATUS_BYTES: usize = 64 * 1024;

/// Refuses a free-text argument (`what`: "reason", "signal name") longer than `limit` bytes,
/// before anything is written.
pub fn check_text(what: &str, text: &str, limit: usize) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "the {what} contains the character U+0000 (NUL), which cannot be stored; remove it"
        )));
    }
    if text.len() > limit {
        return Err(Error::InvalidArgument(format!(
            "the {what} is {} bytes, over the limit of {limit} bytes; shorten it",
            text.len()
        )));
    }
    Ok(())
}

/// Checks an instance id: 1..=128 bytes of `A-Z a-z 0-9 . _ : -`.
pub fn check_id(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is too long"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        "it has a character outside the allowed set"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId {
        id: id.chars().take(MAX_ID_LEN + 8).collect(),
        reason,
    })
}

/// Checks a payload's size.
pub fn check_payload(what: &'static str, json: &str) -> Result<(), Error> {
    if json.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::PayloadTooLarge {
            what,
            size: json.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("order-17:a.b_c").is_ok());
        for bad in ["", "a b", "é", "a/b", &"x".repeat(129)] {
            let err = check_id(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid instance id"), "{err}");
        }
    }

    #[test]
    fn texts() {
        assert!(check_text("reason", &"x".repeat(MAX_REASON_BYTES), MAX_REASON_BYTES).is_ok());
        let err = check_text(
            "reason",
            &"x".repeat(MAX_REASON_BYTES + 1),
            MAX_REASON_BYTES,
        )
        .expect_err("too long");
        assert!(
            err.to_string().contains("over the limit of 1024 bytes"),
            "{err}"
        );
    }

    #[test]
    fn payloads() {
        assert!(check_payload("input", "{}").is_ok());
        let big = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        let err = check_payload("input", &big).expect_err("too big");
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
