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
//! request forever, for the test to SIGKILL the process. With
//! `REDSTAGE_FAULT=<point>:<ms>` it stalls that long and goes on instead,
//! as a host that was descheduled or paused would. Recovery for each:
//! `prepare-partial` and `after-prepare` leave locks with no decision, which
//! are rolled back once their lease expires; `after-decide` and
//! `commit-partial` leave locks of a committed transaction, rolled forward;
//! `before-reply` leaves nothing to do.

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
