//! Participants: the configured components, each bound to a store and a key
//! prefix, compiled once and looked up by name for every step.
//!
//! A participant only ever names relative keys; [`Participant::key`] is the
//! one place a relative key becomes a Redis key, by prefixing it. Prefixes are
//! checked at load (non-empty, clear of `rs:`, not overlapping another
//! participant's on the same store), so a participant can neither reach
//! another's data nor redstage's locks and records.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::runtime::{Component, LoadError, Runtime};

/// One loaded participant.
#[derive(Debug)]
pub struct Participant {
    pub name: String,
    /// The store its keys live on.
    pub store: String,
    pub prefix: String,
    pub component: Component,
}

impl Participant {
    /// The Redis key of a relative key.
    pub fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// The relative key of a Redis key of this participant.
    pub fn relative<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(&self.prefix)
            .expect("key carries the participant's prefix")
    }
}

/// Participants by name.
#[derive(Debug)]
pub struct Registry {
    /// Kept here so its epoch thread lives as long as the components need it.
    _runtime: Runtime,
    participants: BTreeMap<String, Arc<Participant>>,
}

/// Why a participant could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("participant `{name}`: {message}")]
pub struct RegistryError {
    pub name: String,
    pub message: String,
}

impl Registry {
    /// Loads and compiles every participant of `config`.
    pub fn load(runtime: &Runtime, config: &Config) -> Result<Registry, RegistryError> {
        let mut participants = BTreeMap::new();
        for (name, p) in &config.participants {
            let error = |message: String| RegistryError {
                name: name.clone(),
                message,
            };
            let bytes = std::fs::read(&p.component)
                .map_err(|e| error(format!("cannot read {}: {e}", p.component.display())))?;
            let component =
                runtime
                    .load(&bytes, config.limits.clone())
                    .map_err(|LoadError::Invalid(m)| {
                        error(format!("{}: {m}", p.component.display()))
                    })?;
            let participant = Participant {
                name: name.clone(),
                store: p.store.clone(),
                prefix: p.prefix.clone(),
                component,
            };
            participants.insert(name.clone(), Arc::new(participant));
        }
        Ok(Registry {
            _runtime: runtime.clone(),
            participants,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Participant>> {
        self.participants.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.participants.keys().map(String::as_str)
    }
}
