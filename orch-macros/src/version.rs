//! The code version of a workflow: a hash of its signature and body tokens.

use quote::ToTokens;
use syn::ItemFn;

/// FNV-1a (64 bit) over the token text, as 16 hex digits. Stable across builds of the same code.
pub fn of(func: &ItemFn) -> String {
    let mut text = func.sig.to_token_stream().to_string();
    text.push_str(&func.block.to_token_stream().to_string());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
