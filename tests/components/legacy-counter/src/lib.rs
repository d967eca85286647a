//! Test participant: a counter that exports contract 0.1.0
//! (`wit/v0.1/participant.wit`), built with `wit-bindgen` directly, as a
//! participant written before adjustments existed would be. The input is
//! the counter's name, a JSON string; it adds 1 to `count:<name>` (read and
//! written) and outputs the new count.

#[allow(
    missing_debug_implementations,
    unused_qualifications,
    reason = "generated code"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/v0.1",
        world: "participant",
    });
}

use bindings::redstage::participant::types::{Abort, AccessSet, Entry, Outcome, Write};

struct Counter;

fn key(input: &[u8]) -> Result<String, Abort> {
    let name = std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.strip_prefix('"')?.strip_suffix('"'));
    match name {
        Some(name) if !name.is_empty() => Ok(format!("count:{name}")),
        _ => Err(Abort {
            code: "bad_input".into(),
            message: "the input is the counter's name, as a JSON string".into(),
        }),
    }
}

impl bindings::Guest for Counter {
    fn declare(input: Vec<u8>) -> Result<AccessSet, Abort> {
        Ok(AccessSet {
            reads: Vec::new(),
            writes: vec![key(&input)?],
        })
    }

    fn execute(input: Vec<u8>, snapshot: Vec<Entry>) -> Result<Outcome, Abort> {
        let key = key(&input)?;
        let count: i64 = snapshot
            .iter()
            .find(|e| e.key == key)
            .and_then(|e| e.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0)
            + 1;
        Ok(Outcome {
            writes: vec![Write::Set((key, count.to_string().into_bytes()))],
            output: count.to_string().into_bytes(),
        })
    }
}

bindings::export!(Counter with_types_in bindings);
