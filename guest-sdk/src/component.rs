//! The glue between the WIT world and [`Participant`]: input parsing and the
//! conversions to and from the generated types.
//!
//! `export!` instantiates [`Component`] for the participant type and hands it
//! to the exporter that `wit_bindgen` generated. The two entry points below
//! are also what [`crate::testing`] calls, so native tests exercise the same
//! path as the component, minus the canonical ABI.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{
    Abort, Access, Bounded, Declaration, Kind, Mode, Op, Outcome, Participant, Snapshot, Target,
    Value, Write,
};

#[allow(
    missing_debug_implementations,
    unused_qualifications,
    reason = "generated code"
)]
pub mod bindings {
    wit_bindgen::generate!({
        // The contract, copied into the crate so that it is published with
        // it; CI checks the copy against the workspace's `wit/`.
        path: "wit",
        world: "participant",
        // `export!` expands in the participant's crate, which depends on this
        // crate only: the generated macro must be public and must find the
        // bindings here rather than next to the call site.
        pub_export_macro: true,
        export_macro_name: "__export_participant",
        default_bindings_module: "redstage_guest::__private::bindings",
    });
}

use bindings::redstage::participant::types as wit;

/// `P` as seen by the component model. A type rather than a blanket impl
/// because the generated exporter names one concrete type.
pub struct Component<P>(PhantomData<P>);

impl<P> std::fmt::Debug for Component<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Component")
    }
}

impl<P: Participant> bindings::Guest for Component<P> {
    fn declare(input: Vec<u8>) -> Result<wit::AccessSet, wit::Abort> {
        #[cfg(target_arch = "wasm32")]
        crate::console::report_panics();
        let access = declare::<P>(&input).map_err(wit::Abort::from)?;
        let accesses = access.accesses().map(wit::Access::from).collect();
        Ok(wit::AccessSet { accesses })
    }

    fn execute(input: Vec<u8>, snapshot: Vec<wit::Entry>) -> Result<wit::Outcome, wit::Abort> {
        #[cfg(target_arch = "wasm32")]
        crate::console::report_panics();
        let snapshot = Snapshot::from_entries(
            snapshot
                .into_iter()
                .map(|e| (e.key, e.kind.into(), e.target.into(), e.value.into())),
        );
        let (writes, output) = execute::<P>(&input, &snapshot)
            .map_err(wit::Abort::from)?
            .into_parts();
        let writes = writes.into_iter().map(wit::Write::from).collect();
        Ok(wit::Outcome { writes, output })
    }
}

impl From<Abort> for wit::Abort {
    fn from(Abort { code, message }: Abort) -> Self {
        Self { code, message }
    }
}

impl From<Declaration> for wit::Access {
    fn from(d: Declaration) -> Self {
        Self {
            key: d.key,
            kind: d.kind.into(),
            target: d.target.into(),
            mode: match d.mode {
                Mode::Read => wit::Mode::Read,
                Mode::Write => wit::Mode::Write,
                Mode::Adjust => wit::Mode::Adjust,
                Mode::Append => wit::Mode::Append,
            },
        }
    }
}

impl From<Kind> for wit::Kind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::String => wit::Kind::String,
            Kind::Hash => wit::Kind::Hash,
            Kind::Set => wit::Kind::Set,
            Kind::Zset => wit::Kind::Zset,
            Kind::Stream => wit::Kind::Stream,
            Kind::List => wit::Kind::List,
        }
    }
}

impl From<wit::Kind> for Kind {
    fn from(kind: wit::Kind) -> Self {
        match kind {
            wit::Kind::String => Kind::String,
            wit::Kind::Hash => Kind::Hash,
            wit::Kind::Set => Kind::Set,
            wit::Kind::Zset => Kind::Zset,
            wit::Kind::Stream => Kind::Stream,
            wit::Kind::List => Kind::List,
        }
    }
}

impl From<Target> for wit::Target {
    fn from(target: Target) -> Self {
        match target {
            Target::Whole => wit::Target::Whole,
            Target::Field(field) => wit::Target::Field(field),
            Target::Member(member) => wit::Target::Member(member),
            Target::Ranks(start, stop) => wit::Target::Ranks((start, stop)),
            Target::Scores(min, max) => wit::Target::Scores((min, max)),
        }
    }
}

impl From<wit::Target> for Target {
    fn from(target: wit::Target) -> Self {
        match target {
            wit::Target::Whole => Target::Whole,
            wit::Target::Field(field) => Target::Field(field),
            wit::Target::Member(member) => Target::Member(member),
            wit::Target::Ranks((start, stop)) => Target::Ranks(start, stop),
            wit::Target::Scores((min, max)) => Target::Scores(min, max),
        }
    }
}

impl From<wit::Value> for Value {
    fn from(value: wit::Value) -> Self {
        match value {
            wit::Value::Bytes(bytes) => Value::Bytes(bytes),
            wit::Value::Present(present) => Value::Present(present),
            wit::Value::Score(score) => Value::Score(score),
            wit::Value::Fields(fields) => Value::Fields(fields),
            wit::Value::Members(members) => Value::Members(members),
            wit::Value::Ranked(ranked) => Value::Ranked(ranked),
        }
    }
}

impl From<Bounded> for wit::Bounded {
    fn from(b: Bounded) -> Self {
        Self {
            delta: b.delta,
            lower: b.bounds.lower,
            upper: b.bounds.upper,
            abort: b.abort.into(),
        }
    }
}

impl From<Write> for wit::Write {
    fn from(Write { key, op }: Write) -> Self {
        let op = match op {
            Op::Set { value, ttl_ms } => wit::Op::Set((value, ttl_ms)),
            Op::Delete => wit::Op::Delete,
            Op::Adjust(by) => wit::Op::Adjust(by.into()),
            Op::Hset { field, value } => wit::Op::Hset((field, value)),
            Op::Hdel { field } => wit::Op::Hdel(field),
            Op::Hincrby { field, by } => wit::Op::Hincrby((field, by.into())),
            Op::Sadd { member } => wit::Op::Sadd(member),
            Op::Srem { member } => wit::Op::Srem(member),
            Op::Zadd { member, score } => wit::Op::Zadd((member, score)),
            Op::Zrem { member } => wit::Op::Zrem(member),
            Op::Zincrby { member, by } => wit::Op::Zincrby((member, by.into())),
            Op::Xadd { fields, maxlen } => wit::Op::Xadd(wit::StreamEntry { fields, maxlen }),
            Op::Rpush { values } => wit::Op::Rpush(values),
            Op::Lpush { values } => wit::Op::Lpush(values),
            Op::Expire { ttl_ms } => wit::Op::Expire(ttl_ms),
        };
        Self { key, op }
    }
}

pub(crate) fn declare<P: Participant>(input: &[u8]) -> Result<Access, Abort> {
    with_input::<P, _>(input, P::declare)?
}

pub(crate) fn execute<P: Participant>(input: &[u8], snapshot: &Snapshot) -> Result<Outcome, Abort> {
    with_input::<P, _>(input, |input| P::execute(input, snapshot))?
}

/// An input's bytes and what they parsed into.
type Parsed = (Vec<u8>, Box<dyn Any>);

thread_local! {
    /// The last input parsed, as bytes and as the participant's type. The
    /// host calls `declare` and then `execute` with the same input on one
    /// instance (unless a conflict makes it run the step again on another),
    /// so `execute` finds its input parsed. A pure function of the bytes,
    /// so keeping it changes no answer.
    static PARSED: RefCell<Option<Parsed>> = const { RefCell::new(None) };
}

/// Calls `f` with `input` parsed as `P::Input`: the parse `declare` made
/// when `execute` gets the same bytes, else a new one. A parse failure is
/// `bad_input`.
fn with_input<P: Participant, R>(input: &[u8], f: impl FnOnce(&P::Input) -> R) -> Result<R, Abort> {
    // Taken out while `f` runs, so that nothing `f` does can find it borrowed.
    let (bytes, value) = match PARSED.with(|parsed| parsed.borrow_mut().take()) {
        Some((bytes, value)) if bytes == input && value.is::<P::Input>() => (bytes, value),
        _ => {
            let value: P::Input =
                serde_json::from_slice(input).map_err(|err| Abort::bad_input(err.to_string()))?;
            (input.to_vec(), Box::new(value) as Box<dyn Any>)
        }
    };
    let result = f(value.downcast_ref().expect("checked to be a P::Input"));
    PARSED.with(|parsed| *parsed.borrow_mut() = Some((bytes, value)));
    Ok(result)
}
