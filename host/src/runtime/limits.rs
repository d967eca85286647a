//! The limits every participant call runs under, and how one participant's
//! configuration overrides some of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bounds on one participant's calls. Each guards the host (and the other
/// participants) against guest-controlled resource use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CallLimits {
    /// Linear memory of one step's instance, all its memories together.
    /// Guards host memory against a memory bomb.
    pub memory_bytes_max: usize,
    /// Table elements per table. Guards against table growth bombs.
    pub table_elements_max: usize,
    /// Core instances one step's component may create (and, as bounds of
    /// their own, memories and tables). Guards against a component that
    /// multiplies itself to multiply its memory.
    pub instances_max: usize,
    /// Wall time of one call (declare or execute). Guards workers against
    /// loops; measured with epoch ticks, so it is exact to a tick.
    pub call_time_ms: u64,
    /// Bytes of a step's input handed to the participant.
    pub input_bytes_max: usize,
    /// Bytes of a step's output.
    pub output_bytes_max: usize,
    /// Keys one step may declare (reads and writes together).
    pub keys_max: usize,
    /// Bytes of one relative key.
    pub key_bytes_max: usize,
    /// Writes one step may return.
    pub writes_max: usize,
    /// Bytes of one written value.
    pub value_bytes_max: usize,
    /// Bytes of the code of a participant's own abort. Guards responses,
    /// logs and the abort counter's labels.
    pub abort_code_bytes_max: usize,
    /// Bytes of the message of a participant's own abort. Guards responses
    /// and the decision records that keep them.
    pub abort_message_bytes_max: usize,
    /// Bytes of a step's printed output kept, for each of stdout and
    /// stderr: logged with the step and shown by `redstage call`. The rest
    /// is dropped (the step goes on). Guards host memory and the logs
    /// against a participant that prints without end.
    pub guest_output_bytes_max: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            memory_bytes_max: 64 << 20,
            table_elements_max: 20_000,
            instances_max: 64,
            call_time_ms: 200,
            input_bytes_max: 64 << 10,
            output_bytes_max: 1 << 20,
            keys_max: 256,
            key_bytes_max: 512,
            writes_max: 256,
            value_bytes_max: 1 << 20,
            abort_code_bytes_max: 64,
            abort_message_bytes_max: 4096,
            guest_output_bytes_max: 16 << 10,
        }
    }
}

impl CallLimits {
    pub fn call_time(&self) -> Duration {
        Duration::from_millis(self.call_time_ms)
    }
}

/// A limit a participant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Table,
    Instances,
    Time,
    Input,
    Output,
    Keys,
    KeyBytes,
    Writes,
    ValueBytes,
    AbortCodeBytes,
    AbortMessageBytes,
}

impl Limit {
    /// The stable name clients see in `abort.limit`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::Table => "table",
            Limit::Instances => "instances",
            Limit::Time => "time",
            Limit::Input => "input",
            Limit::Output => "output",
            Limit::Keys => "keys",
            Limit::KeyBytes => "key_bytes",
            Limit::Writes => "writes",
            Limit::ValueBytes => "value_bytes",
            Limit::AbortCodeBytes => "abort_code_bytes",
            Limit::AbortMessageBytes => "abort_message_bytes",
        }
    }

    /// The configured bound, for the message.
    pub fn bound(self, limits: &CallLimits) -> String {
        match self {
            Limit::Memory => format!("{} bytes of linear memory", limits.memory_bytes_max),
            Limit::Table => format!("{} table elements", limits.table_elements_max),
            Limit::Instances => format!(
                "{} core instances, memories and tables each",
                limits.instances_max
            ),
            Limit::Time => format!("{} ms per call", limits.call_time_ms),
            Limit::Input => format!("{} bytes of input", limits.input_bytes_max),
            Limit::Output => format!("{} bytes of output", limits.output_bytes_max),
            Limit::Keys => format!("{} declared keys", limits.keys_max),
            Limit::KeyBytes => format!("{} bytes per key", limits.key_bytes_max),
            Limit::Writes => format!("{} writes", limits.writes_max),
            Limit::ValueBytes => format!("{} bytes per value", limits.value_bytes_max),
            Limit::AbortCodeBytes => {
                format!("{} bytes of abort code", limits.abort_code_bytes_max)
            }
            Limit::AbortMessageBytes => {
                format!("{} bytes of abort message", limits.abort_message_bytes_max)
            }
        }
    }
}

/// One participant's `[participants.NAME.limits]`: any keys of
/// [`CallLimits`], each replacing the global value of that key alone.
///
/// Kept as the table that was written, so that a key left out means "the
/// global value" rather than "the default", and merged over the global
/// limits by [`LimitOverrides::apply`], which rejects unknown keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LimitOverrides(serde_json::Map<String, serde_json::Value>);

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `global`, with every key set here replaced.
    pub fn apply(&self, global: &CallLimits) -> Result<CallLimits, String> {
        let mut merged = serde_json::to_value(global).expect("limits serialize");
        let table = merged.as_object_mut().expect("limits are a table");
        table.extend(self.0.clone());
        serde_json::from_value(merged).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(json: serde_json::Value) -> LimitOverrides {
        serde_json::from_value(json).expect("a table")
    }

    #[test]
    fn overrides_replace_only_the_keys_they_set() {
        let global = CallLimits {
            call_time_ms: 50,
            writes_max: 7,
            ..CallLimits::default()
        };
        let merged = overrides(serde_json::json!({"writes_max": 9}))
            .apply(&global)
            .unwrap();
        assert_eq!(
            merged,
            CallLimits {
                writes_max: 9,
                ..global.clone()
            }
        );
        assert_eq!(LimitOverrides::default().apply(&global).unwrap(), global);
    }

    #[test]
    fn overrides_reject_unknown_keys_and_bad_values() {
        let global = CallLimits::default();
        let err = overrides(serde_json::json!({"memory_max": 1}))
            .apply(&global)
            .unwrap_err();
        assert!(err.contains("memory_max"), "{err}");
        let err = overrides(serde_json::json!({"call_time_ms": "fast"}))
            .apply(&global)
            .unwrap_err();
        assert!(err.contains("fast"), "{err}");
    }
}
