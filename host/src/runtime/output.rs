//! What a participant prints: its stdout and stderr, whether written
//! through the contract's `console` import (the SDK's `println!`, its panic
//! hook) or through WASI's `wasi:cli/stdout` and `stderr` (a `wasm32-wasip2`
//! build's standard library).
//!
//! A step keeps the first `limits.guest_output_bytes_max` bytes of each
//! stream and drops the rest, counting what it dropped. The coordinator's
//! steps log what their calls printed (stdout at debug level, stderr at
//! warn) with the participant and step, inside the spans of the transaction
//! and the request; `redstage call` shows it. Apart from that bound, the
//! last [`PANIC_BYTES_MAX`] bytes of stderr are kept for the message of a
//! trap: a panic prints its message just before it traps, and it must reach
//! the step's error however much was printed before.

use serde::Serialize;

/// Bytes at the end of stderr kept for the message of a trap: room for a
/// panic's message and location.
pub const PANIC_BYTES_MAX: usize = 4096;

/// One of a step's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a participant printed during one or more calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestOutput {
    /// The bytes kept of stdout, lossily UTF-8.
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    #[serde(serialize_with = "lossy")]
    pub stderr: Vec<u8>,
    /// Bytes printed past `limits.guest_output_bytes_max` and dropped,
    /// both streams together.
    pub dropped_bytes: u64,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

impl GuestOutput {
    pub fn is_empty(&self) -> bool {
        self.stdout.is_empty() && self.stderr.is_empty() && self.dropped_bytes == 0
    }

    /// Logs what was printed: stdout at debug level, stderr at warn, each
    /// with the participant and the step (the enclosing spans add the
    /// transaction and the request).
    pub fn log(&self, participant: &str, step: usize, phase: &str) {
        let dropped = self.dropped_bytes;
        if !self.stdout.is_empty() {
            let text = String::from_utf8_lossy(&self.stdout);
            tracing::debug!(participant, step, phase, stdout = %text.trim_end(), dropped_bytes = dropped, "participant printed");
        }
        if !self.stderr.is_empty() {
            let text = String::from_utf8_lossy(&self.stderr);
            tracing::warn!(participant, step, phase, stderr = %text.trim_end(), dropped_bytes = dropped, "participant printed to stderr");
        }
        if self.stdout.is_empty() && self.stderr.is_empty() && dropped > 0 {
            tracing::debug!(
                participant,
                step,
                phase,
                dropped_bytes = dropped,
                "participant printed past limits.guest_output_bytes_max"
            );
        }
    }
}

/// A step's output as it is printed: what is kept for the caller, how much
/// of the bound is used, and the end of stderr.
#[derive(Debug, Default)]
pub(super) struct Console {
    /// Printed since the last [`Console::take`].
    pending: GuestOutput,
    /// Bytes kept this step, per stream: the bound is per step.
    kept: [usize; 2],
    /// The end of stderr, for a trap's message.
    tail: Vec<u8>,
}

impl Console {
    /// Bytes `stream` may still keep this step.
    pub(super) fn room(&self, stream: Stream, bytes_max: usize) -> usize {
        bytes_max.saturating_sub(self.kept[stream as usize])
    }

    /// Appends what fits of `bytes` to `stream`.
    pub(super) fn write(&mut self, stream: Stream, bytes: &[u8], bytes_max: usize) {
        let head = &bytes[..bytes.len().min(self.room(stream, bytes_max))];
        let tail = &bytes[bytes.len().saturating_sub(PANIC_BYTES_MAX)..];
        self.write_parts(stream, head, tail, bytes.len());
    }

    /// Appends a write of `total` bytes to `stream`, of which the caller
    /// copied `head` (the most that [`Console::room`] allows) and `tail`
    /// (its last [`PANIC_BYTES_MAX`] bytes, for stderr).
    pub(super) fn write_parts(&mut self, stream: Stream, head: &[u8], tail: &[u8], total: usize) {
        self.kept[stream as usize] += head.len();
        self.pending.dropped_bytes += (total - head.len()) as u64;
        match stream {
            Stream::Stdout => self.pending.stdout.extend_from_slice(head),
            Stream::Stderr => {
                self.pending.stderr.extend_from_slice(head);
                self.tail.extend_from_slice(tail);
                if self.tail.len() > 2 * PANIC_BYTES_MAX {
                    self.tail.drain(..self.tail.len() - PANIC_BYTES_MAX);
                }
            }
        }
    }

    /// What was printed since the last take.
    pub(super) fn take(&mut self) -> GuestOutput {
        std::mem::take(&mut self.pending)
    }

    /// The last bytes written to stderr.
    pub(super) fn tail(&self) -> &[u8] {
        let start = self.tail.len().saturating_sub(PANIC_BYTES_MAX);
        &self.tail[start..]
    }

    /// A new step: a new bound, nothing pending.
    pub(super) fn reset(&mut self) {
        *self = Console::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stream_keeps_its_first_bytes_and_stderr_its_last() {
        let mut console = Console::default();
        console.write(Stream::Stdout, b"hello ", 8);
        console.write(Stream::Stdout, b"world", 8);
        console.write(Stream::Stderr, b"warn", 8);
        let out = console.take();
        assert_eq!(out.stdout, b"hello wo");
        assert_eq!(out.stderr, b"warn");
        assert_eq!(out.dropped_bytes, 3);
        // The bound is per step, not per take.
        console.write(Stream::Stdout, b"more", 8);
        assert_eq!(console.take().dropped_bytes, 4);
        let long = vec![b'x'; 3 * PANIC_BYTES_MAX];
        console.write(Stream::Stderr, &long, 8);
        console.write(Stream::Stderr, b"panicked at x", 8);
        assert!(console.tail().ends_with(b"panicked at x"));
        assert_eq!(console.tail().len(), PANIC_BYTES_MAX);
        console.reset();
        console.write(Stream::Stdout, b"again", 8);
        assert_eq!(console.take().stdout, b"again");
    }
}
