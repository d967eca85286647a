//! The glue between the WIT world and [`Participant`]: input parsing and the
//! conversions to and from the generated types.
//!
//! `export!` instantiates [`Component`] for the participant type and hands it
//! to the exporter that `wit_bindgen` generated. The two entry points below
//! are also what [`crate::testing`] calls, so native tests exercise the same
//! path as the component, minus the canonical ABI.

use std::marker::PhantomData;

use crate::{Abort, Access, Outcome, Participant, Snapshot};

#[allow(
    missing_debug_implementations,
    unused_qualifications,
    reason = "generated code"
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
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
        let (reads, writes, adjusts) = declare::<P>(&input).map_err(wit::Abort::from)?.into_parts();
        Ok(wit::AccessSet {
            reads,
            writes,
            adjusts,
        })
    }

    fn execute(input: Vec<u8>, snapshot: Vec<wit::Entry>) -> Result<wit::Outcome, wit::Abort> {
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
    P::declare(&parse::<P>(input)?)
}

pub(crate) fn execute<P: Participant>(input: &[u8], snapshot: &Snapshot) -> Result<Outcome, Abort> {
    P::execute(&parse::<P>(input)?, snapshot)
}

/// Parses the input anew on each call: `declare` and `execute` are separate
/// calls into the component and may not even share an instance.
fn parse<P: Participant>(input: &[u8]) -> Result<P::Input, Abort> {
    serde_json::from_slice(input).map_err(|err| Abort::bad_input(err.to_string()))
}
