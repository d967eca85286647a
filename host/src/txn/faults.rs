//! Fault points: named edges of the protocol where the crash tests stop a
//! host, so that they can kill it exactly there and check what recovery
//! makes of the state it left.
//!
//! | point             | the host has...                                          |
//! |-------------------|----------------------------------------------------------|
//! | `prepare-partial` | locked and read its first store, not the others          |
//! | `after-prepare`   | locked and read everywhere, executed, not decided        |
//! | `after-decide`    | passed its commit point (record written, the primary     |
//! |                   | store applied), answered nothing, applied nothing else   |
//! | `commit-partial`  | the same, one step later (the primary applied, the       |
//! |                   | others not): where a commit is cut in two                |
//! | `before-reply`    | decided, not answered (the other stores apply meanwhile) |
//! | `after-answer`    | answered `committed`, applied no store but the primary   |
//! | `apply-partial`   | answered, applied its first other store, not the rest    |
//! | `sweep-entry`     | (the sweep) read its batch of expired index entries, and |
//! |                   | is about to resolve the next one                         |
//!
//! Only compiled in with the `failpoints` feature. A point is armed by the
//! environment variable `REDSTAGE_FAULT=<point>`; an armed point prints
//! `redstage: reached fault point <point>` to stderr and then holds the
//! request forever, for the test to SIGKILL the process. With
//! `REDSTAGE_FAULT=<point>:<ms>` it stalls that long and goes on instead,
//! as a host that was descheduled or paused would. Recovery for each:
//! `prepare-partial` and `after-prepare` leave locks with no decision, which
//! are rolled back once their lease expires; `after-decide`,
//! `commit-partial`, `after-answer` and `apply-partial` leave locks of a
//! committed transaction, rolled forward at once by whoever meets them (and
//! by the sweep once their lease is over); `before-reply` leaves at most
//! what the other stores had not applied yet.

/// The environment variable that arms a fault point.
pub const FAULT_ENV: &str = "REDSTAGE_FAULT";

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
enum Action {
    /// Hold the request forever.
    Hold,
    /// Stall this long, then go on.
    Stall(std::time::Duration),
}

#[cfg(feature = "failpoints")]
fn armed(name: &str) -> Option<Action> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let (point, ms) = match spec.split_once(':') {
        Some((point, ms)) => (point, Some(ms.parse::<u64>().ok()?)),
        None => (spec.as_str(), None),
    };
    (point == name).then(|| match ms {
        Some(ms) => Action::Stall(std::time::Duration::from_millis(ms)),
        None => Action::Hold,
    })
}

#[cfg(not(feature = "failpoints"))]
fn armed(_name: &str) -> Option<Action> {
    None
}

/// Stops here, saying so, when `name` is armed.
pub async fn point(name: &str) {
    if let Some(action) = armed(name) {
        eprintln!("redstage: reached fault point {name}");
        wait(action).await;
    }
}

/// Stops here, silently, when `name` is armed: keeps the other branches of
/// a parallel phase from passing the point.
pub async fn hold(name: &str) {
    if let Some(action) = armed(name) {
        wait(action).await;
    }
}

async fn wait(action: Action) {
    match action {
        Action::Hold => std::future::pending::<()>().await,
        Action::Stall(d) => tokio::time::sleep(d).await,
    }
}
