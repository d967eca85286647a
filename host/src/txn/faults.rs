//! Fault points: named edges of the protocol where the crash tests stop a
//! host, so that they can kill it exactly there and check what recovery
//! makes of the state it left.
//!
//! | point             | the host has...                                          |
//! |-------------------|----------------------------------------------------------|
//! | `prepare-partial` | locked and staged on its first store, not on the others  |
//! | `after-prepare`   | locked and staged everywhere, validated, not decided     |
//! | `after-decide`    | written `committed`, applied nowhere                     |
//! | `commit-partial`  | applied on its first store, not on the others            |
//! | `before-reply`    | finished and recorded, not answered                      |
//!
//! Only compiled in with the `failpoints` feature. A point is armed by the
//! environment variable `REDSTAGE_FAULT=<point>`; an armed point prints
//! `redstage: reached fault point <point>` to stderr and then holds the
//! request forever, for the test to SIGKILL the process. Recovery for each:
//! `prepare-partial` and `after-prepare` leave locks with no decision, which
//! are rolled back once their lease expires; `after-decide` and
//! `commit-partial` leave locks of a committed transaction, rolled forward;
//! `before-reply` leaves nothing to do.

/// The environment variable that arms a fault point.
pub const FAULT_ENV: &str = "REDSTAGE_FAULT";

#[cfg(feature = "failpoints")]
fn armed(name: &str) -> bool {
    std::env::var(FAULT_ENV).is_ok_and(|v| v == name)
}

#[cfg(not(feature = "failpoints"))]
fn armed(_name: &str) -> bool {
    false
}

/// Stops here for good, saying so, when `name` is armed.
pub async fn point(name: &str) {
    if armed(name) {
        eprintln!("redstage: reached fault point {name}");
        std::future::pending::<()>().await;
    }
}

/// Stops here for good, silently, when `name` is armed: keeps the other
/// branches of a parallel phase from passing the point.
pub async fn hold(name: &str) {
    if armed(name) {
        std::future::pending::<()>().await;
    }
}
