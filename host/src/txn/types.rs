//! The plain data of transactions: what clients send and get back, and the
//! decision record kept on the log store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::store::Base64;
use crate::store::{KeyWork, Kind, Mode, Op};

/// A transaction as a client submits it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "steps": [
        {"participant": "inventory", "input": {"op": "deduct", "sku": "A1", "qty": 2}},
        {"participant": "payments", "input": {"op": "transfer", "from": "alice", "to": "shop", "amount": 30}}
    ],
    "idempotency_key": "order-1042"
}))]
pub struct TxnRequest {
    /// Run in order; each sees the writes of the ones before it (at least
    /// one, at most `txn.steps_max`).
    #[schema(min_items = 1)]
    pub steps: Vec<StepRequest>,
    /// A client's name for this request, so that a retry is recognised: 1
    /// to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub idempotency_key: Option<String>,
}

/// One step: which participant, and the input (any JSON) it is given.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// A participant's name: 1 to 64 ASCII letters, digits, `-` and `_`,
    /// not starting with `-` (the names the host gives participants).
    #[schema(
        pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub participant: String,
    pub input: serde_json::Value,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Committed,
    Aborted,
}

/// What a client gets back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TxnResponse {
    /// The id of the attempt that decided the outcome.
    pub id: String,
    pub status: Status,
    /// How many times the transaction ran (conflicts re-run it).
    pub attempts: u32,
    /// Each step's output, in order; empty when aborted.
    pub steps: Vec<StepOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepOutput {
    pub participant: String,
    pub output: serde_json::Value,
}

/// Why a transaction aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AbortInfo {
    /// The step that said no; absent when no step did (`conflict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// A participant's own code (`insufficient_stock`), or one of the host's
    /// ([`crate::runtime::RESERVED_ABORT_CODES`], `not_an_integer`,
    /// `overflow`).
    pub code: String,
    pub message: String,
    /// With `limit_exceeded`: which limit (`memory`, `time`, `output`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// The decision record, `rs:txn:<id>` on the transaction's primary store.
/// The commit point writes it unless a record stands (`aborted`, written by
/// a recovering host with `SET NX`): the first decision stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// Committed. Until every store has applied, `stores` holds, for each
    /// store other than the primary, the keys the transaction locked there
    /// and the writes to apply to them, so that whoever meets one of its
    /// locks can roll it forward. Once all are applied the record shrinks to
    /// `{"state":"committed"}`.
    Committed {
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        stores: BTreeMap<String, StoreWork>,
    },
    /// Written by the coordinator (with the reason), or by whoever found
    /// the transaction's lock expired with no decision (without one).
    Aborted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        abort: Option<AbortInfo>,
    },
}

/// What a committed transaction still has to do on one store: every key
/// it has there, in the order locked, with its targets and its changes.
/// Keys without changes are only released.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreWork {
    pub keys: Vec<WorkKey>,
}

/// One key of a [`StoreWork`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkKey {
    pub key: String,
    pub kind: Kind,
    /// What it locks (or only appends to), as in its index entry.
    pub targets: Vec<(Option<String>, Mode)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
}

impl WorkKey {
    pub fn work(&self) -> KeyWork<'_> {
        KeyWork {
            key: &self.key,
            kind: self.kind,
            targets: &self.targets,
            reads: &[],
            ops: &self.ops,
        }
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Which of several records of one transaction stands (see
    /// `Coordinator::lookup`): a commit, since only its primary can hold
    /// one; then an abort with its reason; then one without.
    pub fn finality(&self) -> u8 {
        match self {
            Record::Committed { .. } => 2,
            Record::Aborted { abort: Some(_) } => 1,
            Record::Aborted { abort: None } => 0,
        }
    }

    /// `{"state":"committed"}`: what a committed record shrinks to.
    pub fn compact_committed() -> Record {
        Record::Committed {
            stores: BTreeMap::new(),
        }
    }
}

/// What a lookup by id finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LookupStatus {
    Committed,
    Aborted,
    /// No decision is written yet: the transaction is running (or, within
    /// its lease, may be), or its coordinator died and recovery will abort
    /// it once its leases run out.
    InDoubt,
}

/// The answer to `GET /v1/transactions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lookup {
    pub id: String,
    pub status: LookupStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortInfo>,
}

impl Lookup {
    /// What a decision record says of transaction `id`.
    pub fn of(id: &str, record: Record) -> Lookup {
        let (status, abort) = match record {
            Record::Committed { .. } => (LookupStatus::Committed, None),
            Record::Aborted { abort } => (LookupStatus::Aborted, abort),
        };
        Lookup {
            id: id.to_owned(),
            status,
            abort,
        }
    }

    pub fn in_doubt(id: &str) -> Lookup {
        Lookup {
            id: id.to_owned(),
            status: LookupStatus::InDoubt,
            abort: None,
        }
    }
}

/// Renders participant output bytes for the response: JSON as JSON, empty
/// as null, other UTF-8 as a string, anything else as `{"base64": ...}`.
pub fn output_json(bytes: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    if let Ok(v) = serde_json::from_slice(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record::Committed {
            stores: BTreeMap::from([(
                "ledger".into(),
                StoreWork {
                    keys: vec![
                        WorkKey {
                            key: "payments:balance:alice".into(),
                            kind: Kind::String,
                            targets: vec![(None, Mode::Exclusive)],
                            ops: vec![Op::Set {
                                value: Base64(vec![0xff, b'7']),
                                ttl_ms: Some(5),
                            }],
                        },
                        WorkKey {
                            key: "user:{a}".into(),
                            kind: Kind::Hash,
                            targets: vec![(Some("sent".into()), Mode::Adjust)],
                            ops: vec![Op::Adjust {
                                part: Some("sent".into()),
                                steps: vec![crate::store::Bounded {
                                    delta: -3,
                                    lower: Some(0),
                                    upper: None,
                                }],
                            }],
                        },
                        WorkKey {
                            key: "events".into(),
                            kind: Kind::Stream,
                            targets: vec![(None, Mode::Append)],
                            ops: vec![Op::XAdd {
                                fields: vec![("type".into(), Base64(b"placed".to_vec()))],
                                maxlen: None,
                            }],
                        },
                    ],
                },
            )]),
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert_eq!(
            Record::compact_committed().encode(),
            br#"{"state":"committed"}"#
        );
        assert_eq!(
            Record::Aborted { abort: None }.encode(),
            br#"{"state":"aborted"}"#
        );
    }

    #[test]
    fn output_rendering() {
        assert_eq!(output_json(b""), serde_json::Value::Null);
        assert_eq!(output_json(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(output_json(b"plain"), serde_json::json!("plain"));
        assert_eq!(
            output_json(&[0xff, 0]),
            serde_json::json!({"base64": "/wA="})
        );
    }
}
