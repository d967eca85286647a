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

use crate::{Abort, Access, Outcome, Participant, Snapshot};

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
        let (reads, writes, adjusts) = declare::<P>(&input).map_err(wit::Abort::from)?.into_parts();
        Ok(wit::AccessSet {
            reads,
            writes,
            adjusts,
        })
    }

    fn execute(input: Vec<u8>, snapshot: Vec<wit::Entry>) -> Result<wit::Outcome, wit::Abort> {
        #[cfg(target_arch = "wasm32")]
        crate::console::report_panics();
        let snapshot = Snapshot::from_entries(snapshot.into_iter().map(|e| (e.key, e.value)));
        let (writes, adjustments, output) = execute::<P>(&input, &snapshot)
            .map_err(wit::Abort::from)?
            .into_parts();
        let adjustments = adjustments.into_iter().map(|a| {
            wit::Write::Adjust(wit::Adjustment {
                key: a.key,
                delta: a.delta,
                lower: a.bounds.lower,
                upper: a.bounds.upper,
                abort: a.abort.into(),
            })
        });
        let writes = writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => wit::Write::Set((key, value)),
                None => wit::Write::Delete(key),
            })
            .chain(adjustments)
            .collect();
        Ok(wit::Outcome { writes, output })
    }
}

impl From<Abort> for wit::Abort {
    fn from(Abort { code, message }: Abort) -> Self {
        Self { code, message }
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
