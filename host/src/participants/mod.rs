//! Participants: components, each bound to a store and a key prefix,
//! compiled once and looked up by name for every step.
//!
//! A participant only ever names relative keys; [`Participant::key`] is the
//! one place a relative key becomes a Redis key, by prefixing it. Prefixes are
//! checked whenever a participant is loaded (non-empty, clear of `rs:`, not
//! overlapping another participant's on the same store), so a participant can
//! neither reach another's data nor redstage's locks and records.
//!
//! # Versions
//!
//! Participants come from the config file, and from the deploy folder
//! (`[deploy] folder`, see [`folder`]), where deploys write them and from
//! which every host sharing the folder loads them. A new version is
//! compiled and checked (world, limits, placement) before it replaces the
//! old one, which keeps running meanwhile. The registry hands out
//! `Arc<Participant>`s: a transaction holds the versions it resolved at its
//! start for all its steps and attempts, so a transaction in flight finishes
//! on the version it started with while new ones get the new version.
//!
//! The deploy folder also keeps each participant's last
//! `deploy.versions_max` versions and its history (see [`folder`]): a
//! rollback makes the version before the current one current again, the
//! same way a deploy of it would.
//!
//! A participant's `reuse_steps` and `reuse_audit` (see `runtime::reuse`)
//! belong to its version: a new version starts with no idle instances and
//! reuse on again, and the old version's idle instances are dropped when it
//! is replaced.

pub mod folder;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::metrics::CallStats;
use crate::runtime::{
    CallError, CallLimits, Component, Instance, LimitOverrides, ReusePolicy, Runtime,
};
use folder::{EntryError, Folder, HistoryAction, HistoryEntry, Manifest};

/// One loaded participant: one version of it.
#[derive(Debug)]
pub struct Participant {
    pub name: String,
    /// The store its keys live on.
    pub store: String,
    /// The prefix its keys are named relative to (empty with `prefixes`).
    pub prefix: String,
    /// The prefixes its keys, named in full, must each start with (empty
    /// with `prefix`).
    pub prefixes: Vec<String>,
    pub component: Component,
    pub version: Version,
    /// Calls into this version, and their time.
    pub calls: CallStats,
}

/// Which version of a participant this is, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub source: Source,
    pub component_bytes: usize,
    /// When this version was loaded, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
}

/// Where a participant is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `[participants.NAME]` of the config file: changed by editing it and
    /// restarting.
    Config,
    /// `NAME.wasm` + `NAME.toml` in the deploy folder.
    Folder,
}

impl Participant {
    /// The Redis key of a key the participant names: under its `prefix`,
    /// or the name itself when it starts with one of its `prefixes` (None
    /// when it does not: the key is outside its namespaces).
    pub fn key(&self, name: &str) -> Option<String> {
        if !self.prefix.is_empty() {
            return Some(format!("{}{name}", self.prefix));
        }
        self.prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
            .then(|| name.to_owned())
    }

    /// An instance for step `step` of a transaction (see
    /// [`Component::instantiate`]), counted in [`Participant::calls`]; what
    /// it prints is logged with the step.
    pub async fn instantiate(&self, step: usize) -> Result<Instance, CallError> {
        let started = std::time::Instant::now();
        let instance = self.component.instantiate().await;
        self.calls.instantiate.record(started.elapsed());
        let mut instance = instance?;
        instance.for_step(step);
        Ok(instance)
    }

    /// The key a participant names for a Redis key of its own.
    pub fn relative<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(&self.prefix)
            .expect("key carries the participant's prefix")
    }

    /// The prefixes its keys live under.
    pub fn namespaces(&self) -> Vec<&str> {
        crate::config::namespaces(&self.prefix, &self.prefixes)
    }
}

/// Participants by name, current versions.
#[derive(Debug)]
pub struct Registry {
    /// Kept here so its epoch thread lives as long as the components need it.
    runtime: Runtime,
    config: Config,
    folder: Option<Folder>,
    participants: RwLock<BTreeMap<String, Arc<Participant>>>,
    /// Folder entries that could not be loaded, and why (the previous
    /// version, if any, still runs).
    broken: RwLock<BTreeMap<String, String>>,
    /// Serializes changes (deploys, removals, folder scans) so that each
    /// checks placement against the participants it will sit next to.
    changing: Mutex<()>,
}

/// Why a participant could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("participant `{name}`: {message}")]
pub struct RegistryError {
    pub name: String,
    pub message: String,
}

/// Why a deploy or removal was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploys are disabled: the config has no [deploy] folder to keep them in")]
    Disabled,
    #[error(
        "`{0}` is not a participant name: 1 to 64 ASCII letters, digits, `-` or `_`, not starting with `-`"
    )]
    BadName(String),
    #[error("participant `{0}` is defined in the config file; change it there")]
    ConfiguredInFile(String),
    #[error("no participant named `{0}`")]
    Unknown(String),
    #[error("the component has {bytes} bytes; deploy.component_bytes_max is {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("{0}")]
    BadManifest(String),
    #[error("{0}")]
    InvalidComponent(String),
    #[error("could not write the deploy folder: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's token may not do this; the message says what it lacks.
    #[error("{0}")]
    Forbidden(String),
    /// A rollback with no earlier version kept.
    #[error("{0}")]
    NoPreviousVersion(String),
}

impl DeployError {
    /// The stable code of the error, for clients.
    pub fn code(&self) -> &'static str {
        match self {
            DeployError::Disabled => "deploy_disabled",
            DeployError::BadName(_) => "bad_participant_name",
            DeployError::ConfiguredInFile(_) => "configured_in_file",
            DeployError::Unknown(_) => "unknown_participant",
            DeployError::TooLarge { .. } => "component_too_large",
            DeployError::BadManifest(_) => "bad_manifest",
            DeployError::InvalidComponent(_) => "invalid_component",
            DeployError::Io(_) => "deploy_failed",
            DeployError::Forbidden(_) => "forbidden",
            DeployError::NoPreviousVersion(_) => "no_previous_version",
        }
    }
}

/// One participant in the listing of `GET /v1/participants`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub name: String,
    pub store: String,
    pub prefix: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    pub version: Version,
    /// The contract version the component was built against: `0.2.1`,
    /// `0.2.0` or `0.1.0`.
    pub contract: &'static str,
    pub limits: CallLimits,
    /// Steps an instance may serve (`reuse_steps`; 0: a fresh instance per
    /// step), and the fraction of reused steps audited (`reuse_audit`).
    pub reuse: ReusePolicy,
}

impl From<&Participant> for Listed {
    fn from(p: &Participant) -> Listed {
        Listed {
            name: p.name.clone(),
            store: p.store.clone(),
            prefix: p.prefix.clone(),
            prefixes: p.prefixes.clone(),
            version: p.version.clone(),
            contract: p.component.contract(),
            limits: p.component.limits().clone(),
            reuse: p.component.reuse_policy(),
        }
    }
}

/// One participant in full, for `GET /v1/participants/{name}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Detail {
    #[serde(flatten)]
    pub current: Listed,
    /// Why its deploy folder entry does not load, if it does not (the
    /// version above keeps running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The versions kept for rollbacks, the current one first, then the
    /// one a rollback makes current, and so on (deploy folder participants
    /// only).
    pub versions: Vec<Kept>,
    /// Deploys, rollbacks and removals, newest first (at most
    /// `participants::folder::HISTORY_MAX`).
    pub history: Vec<HistoryEntry>,
}

/// A version kept in the deploy folder.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Kept {
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub store: String,
    pub prefix: String,
    pub component_bytes: usize,
    /// Overrides of the global `[limits]` it was deployed with.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    #[schema(value_type = Object)]
    pub limits: LimitOverrides,
    /// Whether it is the version running now.
    pub current: bool,
}

/// Who asks for a change: the token's name, when the server has tokens,
/// and what it may change (`None`: anything).
#[derive(Debug, Clone, Default)]
pub struct Deployer {
    pub name: Option<String>,
    /// The participants it may deploy (`*`: all).
    pub participants: Option<Vec<String>>,
    /// The stores it may deploy to (`*`: all).
    pub stores: Option<Vec<String>>,
}

impl Deployer {
    /// Refused unless it may change participant `name` (and place it on
    /// `store`, if given), naming what it lacks.
    pub fn may(&self, name: &str, store: Option<&str>) -> Result<(), DeployError> {
        let allows = |list: &Option<Vec<String>>, item: &str| {
            list.as_ref()
                .is_none_or(|l| l.iter().any(|x| x == "*" || x == item))
        };
        let token = self.name.as_deref().unwrap_or("?");
        if !allows(&self.participants, name) {
            return Err(DeployError::Forbidden(format!(
                "token `{token}` may not deploy participant `{name}`: its `participants` are {}",
                self.participants.as_deref().unwrap_or_default().join(", ")
            )));
        }
        if let Some(store) = store.filter(|s| !allows(&self.stores, s)) {
            return Err(DeployError::Forbidden(format!(
                "token `{token}` may not deploy to store `{store}`: its `stores` are {}",
                self.stores.as_deref().unwrap_or_default().join(", ")
            )));
        }
        Ok(())
    }
}

/// Everything the registry holds, for `GET /v1/participants`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listing {
    pub participants: Vec<Listed>,
    /// Folder entries that failed to load, by name: why.
    pub errors: BTreeMap<String, String>,
}

/// What a scan of the folder changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

impl Registry {
    /// Loads and compiles every participant of `config`, then those of its
    /// deploy folder. A config participant that fails to load is an error;
    /// a folder entry that does is logged and listed, so that one team's
    /// broken upload cannot keep the service from starting.
    pub fn load(runtime: &Runtime, config: &Config) -> Result<Registry, RegistryError> {
        let mut participants = BTreeMap::new();
        for (name, p) in &config.participants {
            let error = |message: String| RegistryError {
                name: name.clone(),
                message,
            };
            let bytes = std::fs::read(&p.component)
                .map_err(|e| error(format!("cannot read {}: {e}", p.component.display())))?;
            let limits = config
                .limits_of(name, p)
                .map_err(|e| error(e.to_string()))?;
            let component = runtime
                .load(&bytes, limits)
                .map_err(|e| error(format!("{}: {e}", p.component.display())))?
                .with_reuse(name, p.reuse());
            let participant = Participant {
                name: name.clone(),
                store: p.store.clone(),
                prefix: p.prefix.clone(),
                prefixes: p.prefixes.clone(),
                component,
                version: Version::of(&bytes, Source::Config),
                calls: CallStats::default(),
            };
            participants.insert(name.clone(), Arc::new(participant));
        }
        let registry = Registry {
            runtime: runtime.clone(),
            config: config.clone(),
            folder: config.deploy.folder.clone().map(Folder::new),
            participants: RwLock::new(participants),
            broken: RwLock::default(),
            changing: Mutex::default(),
        };
        registry.scan();
        Ok(registry)
    }

    /// A registry of no participant at all, and no deploy folder: for the
    /// commands that only read the stores (`status`, `recover`), which need
    /// no component compiled.
    pub fn unloaded(runtime: &Runtime, config: &Config) -> Registry {
        Registry {
            runtime: runtime.clone(),
            config: config.clone(),
            folder: None,
            participants: RwLock::default(),
            broken: RwLock::default(),
            changing: Mutex::default(),
        }
    }

    /// The runtime the participants were loaded by (and its compile cache).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The current version of participant `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Participant>> {
        self.read().get(name).cloned()
    }

    /// The current version of each participant named, all looked up under
    /// one read of the registry: a deploy lands before all of them or after
    /// all of them, so a transaction never runs two versions of one
    /// participant. `Err(i)` when the `i`th name is unknown.
    pub fn get_all<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Vec<Arc<Participant>>, usize> {
        let participants = self.read();
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| participants.get(name).cloned().ok_or(i))
            .collect()
    }

    /// The current version of every participant.
    pub fn all(&self) -> Vec<Arc<Participant>> {
        self.read().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The largest component a deploy accepts.
    pub fn component_bytes_max(&self) -> usize {
        self.config.deploy.component_bytes_max
    }

    /// Whether participants are loaded from a deploy folder.
    pub fn has_folder(&self) -> bool {
        self.folder.is_some()
    }

    pub fn list(&self) -> Listing {
        let participants = self.read().values().map(|p| Listed::from(&**p)).collect();
        Listing {
            participants,
            errors: self.broken.read().expect("registry lock").clone(),
        }
    }

    /// Deploys `bytes` as the new version of participant `name` (a new one,
    /// or one of the folder), placed as `manifest` says, for `by` (who must
    /// be allowed to). The component is compiled and checked first; only
    /// then is it written to the folder and swapped in. Blocks while
    /// compiling: call it off the async workers.
    pub fn deploy(
        &self,
        name: &str,
        manifest: Manifest,
        bytes: &[u8],
        by: &Deployer,
    ) -> Result<Arc<Participant>, DeployError> {
        let folder = self.changeable(name, by)?;
        by.may(name, Some(&manifest.store))?;
        let _changing = self.changing.lock().expect("registry lock");
        let max = self.config.deploy.component_bytes_max;
        if bytes.len() > max {
            return Err(DeployError::TooLarge {
                bytes: bytes.len(),
                max,
            });
        }
        let participant = Arc::new(self.build(name, &manifest, bytes)?);
        self.put(
            folder,
            &participant,
            &manifest,
            bytes,
            HistoryAction::Deploy,
            by,
        )?;
        Ok(participant)
    }

    /// Makes the version of `name` before the current one current again
    /// (see [`folder`]), for `by` (who must be allowed to deploy it where
    /// it goes). Blocks while compiling: call it off the async workers.
    pub fn rollback(&self, name: &str, by: &Deployer) -> Result<Arc<Participant>, DeployError> {
        let folder = self.changeable(name, by)?;
        let _changing = self.changing.lock().expect("registry lock");
        if self.get(name).is_none() {
            return Err(DeployError::Unknown(name.to_owned()));
        }
        let history = folder.history(name);
        let stack = stack(&history);
        let Some(previous) = stack.iter().rev().nth(1) else {
            return Err(DeployError::NoPreviousVersion(format!(
                "participant `{name}` has no version before its current one to roll back to"
            )));
        };
        let hex = previous.trim_start_matches("sha256:");
        let (manifest, bytes) = folder.kept(name, hex).map_err(|e| match e {
            EntryError::Broken(m) => DeployError::NoPreviousVersion(m),
            EntryError::InProgress => DeployError::NoPreviousVersion(format!(
                "the version of `{name}` before its current one is being written"
            )),
        })?;
        by.may(name, Some(&manifest.store))?;
        let participant = Arc::new(self.build(name, &manifest, &bytes)?);
        self.put(
            folder,
            &participant,
            &manifest,
            &bytes,
            HistoryAction::Rollback,
            by,
        )?;
        Ok(participant)
    }

    /// The deploy folder, if `name` is a participant of it that `by` may
    /// change at all.
    fn changeable(&self, name: &str, by: &Deployer) -> Result<&Folder, DeployError> {
        let folder = self.folder.as_ref().ok_or(DeployError::Disabled)?;
        folder::check_name(name)?;
        if self.config.participants.contains_key(name) {
            return Err(DeployError::ConfiguredInFile(name.to_owned()));
        }
        by.may(name, None)?;
        Ok(folder)
    }

    /// Writes a built version as `name`'s current one, keeps it, logs it
    /// in the history and on stderr, drops versions past
    /// `deploy.versions_max`, and swaps it in.
    fn put(
        &self,
        folder: &Folder,
        participant: &Arc<Participant>,
        manifest: &Manifest,
        bytes: &[u8],
        action: HistoryAction,
        by: &Deployer,
    ) -> Result<(), DeployError> {
        let name = &participant.name;
        folder.write(name, manifest, bytes)?;
        folder.keep(name, manifest, bytes)?;
        let entry = HistoryEntry {
            at_ms: participant.version.loaded_at_ms,
            action,
            digest: participant.version.digest.clone(),
            store: manifest.store.clone(),
            prefix: manifest.prefix.clone(),
            by: by.name.clone(),
            host: crate::txn::resolve::host().to_owned(),
        };
        folder.log(name, &entry)?;
        let history = folder.history(name);
        let keep: Vec<String> = stack(&history)
            .iter()
            .rev()
            .take(self.config.deploy.versions_max)
            .map(|d| d.trim_start_matches("sha256:").to_owned())
            .collect();
        folder.prune(name, &keep)?;
        self.install(participant.clone());
        let action = match action {
            HistoryAction::Deploy => "deployed",
            _ => "rolled back",
        };
        tracing::info!(
            participant = %name,
            version = %participant.version.digest,
            store = %manifest.store,
            prefix = %manifest.prefix,
            token = %by.name.as_deref().unwrap_or("-"),
            "{action}"
        );
        Ok(())
    }

    /// Removes folder participant `name`, for `by`. Transactions that
    /// already hold it finish; new ones no longer find it.
    pub fn remove(&self, name: &str, by: &Deployer) -> Result<(), DeployError> {
        let folder = self.changeable(name, by)?;
        let _changing = self.changing.lock().expect("registry lock");
        let current = self.get(name);
        if current.is_none() && !self.is_broken(name) {
            return Err(DeployError::Unknown(name.to_owned()));
        }
        folder.remove(name)?;
        if let Some(old) = self.write().remove(name) {
            old.component.retire();
        }
        self.broken.write().expect("registry lock").remove(name);
        if let Some(p) = current {
            let entry = HistoryEntry {
                at_ms: crate::now_ms(),
                action: HistoryAction::Remove,
                digest: p.version.digest.clone(),
                store: p.store.clone(),
                prefix: p.prefix.clone(),
                by: by.name.clone(),
                host: crate::txn::resolve::host().to_owned(),
            };
            folder.log(name, &entry)?;
        }
        tracing::info!(
            participant = name,
            token = %by.name.as_deref().unwrap_or("-"),
            "removed"
        );
        Ok(())
    }

    /// Participant `name` in full: its current version, the versions kept
    /// for rollbacks and its history. `None` unless it runs here.
    pub fn detail(&self, name: &str) -> Option<Detail> {
        let current = Listed::from(&*self.get(name)?);
        let error = self
            .broken
            .read()
            .expect("registry lock")
            .get(name)
            .cloned();
        let Some(folder) = self
            .folder
            .as_ref()
            .filter(|_| current.version.source == Source::Folder)
        else {
            return Some(Detail {
                current,
                error,
                versions: Vec::new(),
                history: Vec::new(),
            });
        };
        let mut history = folder.history(name);
        let kept = folder.kept_digests(name);
        let mut versions = Vec::new();
        for digest in stack(&history).into_iter().rev() {
            let hex = digest.trim_start_matches("sha256:");
            if versions.iter().any(|v: &Kept| v.digest == digest) || !kept.iter().any(|k| k == hex)
            {
                continue;
            }
            if let Ok((manifest, bytes)) = folder.kept(name, hex) {
                versions.push(Kept {
                    current: digest == current.version.digest,
                    digest: digest.to_owned(),
                    store: manifest.store,
                    prefix: manifest.prefix,
                    component_bytes: bytes.len(),
                    limits: manifest.limits,
                });
            }
        }
        history.reverse();
        history.truncate(folder::HISTORY_MAX);
        Some(Detail {
            current,
            error,
            versions,
            history,
        })
    }

    /// Brings the folder participants in line with the folder: loads new and
    /// changed entries, drops removed ones. An entry that fails to load is
    /// listed with its error; its previous version, if any, keeps running.
    /// Blocks while compiling: call it off the async workers.
    pub fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let Some(folder) = &self.folder else {
            return report;
        };
        let _changing = self.changing.lock().expect("registry lock");
        let entries = match folder.entries() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(folder = %folder.path().display(), error = %e, "cannot read the deploy folder");
                return report;
            }
        };
        let gone: Vec<String> = self
            .read()
            .values()
            .filter(|p| p.version.source == Source::Folder && !entries.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect();
        for name in gone {
            if let Some(old) = self.write().remove(&name) {
                old.component.retire();
            }
            tracing::info!(participant = %name, "removed from the deploy folder");
            report.removed.push(name);
        }
        self.broken
            .write()
            .expect("registry lock")
            .retain(|name, _| entries.contains_key(name));
        for (name, entry) in entries {
            if !folder.changed(&name, &entry) {
                continue;
            }
            let loaded = if self.config.participants.contains_key(&name) {
                Err(EntryError::Broken(format!(
                    "`{name}` is defined in the config file too; the folder entry is ignored"
                )))
            } else {
                folder.read(&name).and_then(|(manifest, bytes)| {
                    self.build(&name, &manifest, &bytes)
                        .map_err(|e| EntryError::Broken(e.to_string()))
                })
            };
            match loaded {
                Ok(participant) => {
                    tracing::info!(participant = %name, version = %participant.version.digest, "loaded from the deploy folder");
                    self.install(Arc::new(participant));
                    report.loaded.push(name.clone());
                }
                // Being written by a deploy: look again next time.
                Err(EntryError::InProgress) => continue,
                Err(EntryError::Broken(e)) => {
                    tracing::error!(participant = %name, error = %e, "cannot load from the deploy folder");
                    self.broken
                        .write()
                        .expect("registry lock")
                        .insert(name.clone(), e);
                    report.failed.push(name.clone());
                }
            }
            folder.seen(&name, entry);
        }
        report
    }

    /// Compiles and checks a folder participant, without installing it.
    fn build(
        &self,
        name: &str,
        manifest: &Manifest,
        bytes: &[u8],
    ) -> Result<Participant, DeployError> {
        let others = self.read();
        let placed = others
            .values()
            .map(|p| (p.name.as_str(), p.store.as_str(), p.namespaces()));
        self.config
            .check_placement(
                name,
                &manifest.store,
                (&manifest.prefix, &manifest.prefixes),
                placed,
            )
            .map_err(DeployError::BadManifest)?;
        drop(others);
        let limits = manifest
            .limits
            .apply(&self.config.limits)
            .map_err(|e| DeployError::BadManifest(format!("limits: {e}")))?;
        self.runtime
            .check_limits(&limits)
            .map_err(|e| DeployError::BadManifest(format!("limits: {e}")))?;
        manifest.reuse().check().map_err(DeployError::BadManifest)?;
        let component = self
            .runtime
            .load(bytes, limits)
            .map_err(|e| DeployError::InvalidComponent(e.to_string()))?
            .with_reuse(name, manifest.reuse());
        Ok(Participant {
            name: name.to_owned(),
            store: manifest.store.clone(),
            prefix: manifest.prefix.clone(),
            prefixes: manifest.prefixes.clone(),
            component,
            version: Version::of(bytes, Source::Folder),
            calls: CallStats::default(),
        })
    }

    fn install(&self, participant: Arc<Participant>) {
        self.broken
            .write()
            .expect("registry lock")
            .remove(&participant.name);
        let old = self.write().insert(participant.name.clone(), participant);
        // Its idle instances go: steps of the new version start fresh.
        if let Some(old) = old {
            old.component.retire();
        }
    }

    fn is_broken(&self, name: &str) -> bool {
        self.broken
            .read()
            .expect("registry lock")
            .contains_key(name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Participant>>> {
        self.participants.read().expect("registry lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Participant>>> {
        self.participants.write().expect("registry lock")
    }
}

impl Version {
    fn of(bytes: &[u8], source: Source) -> Version {
        Version {
            digest: format!("sha256:{}", crate::hex(&Sha256::digest(bytes))),
            source,
            component_bytes: bytes.len(),
            loaded_at_ms: crate::now_ms(),
        }
    }
}

/// The versions a history leaves, oldest first, the current one last: a
/// deploy pushes its version, a rollback pops the current one (and pushes
/// the version it names, should another be on top), a removal empties it.
fn stack(history: &[HistoryEntry]) -> Vec<&str> {
    let mut stack: Vec<&str> = Vec::new();
    for entry in history {
        match entry.action {
            HistoryAction::Deploy => stack.push(&entry.digest),
            HistoryAction::Rollback => {
                stack.pop();
                if stack.last() != Some(&entry.digest.as_str()) {
                    stack.push(&entry.digest);
                }
            }
            HistoryAction::Remove => stack.clear(),
        }
    }
    stack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: HistoryAction, digest: &str) -> HistoryEntry {
        HistoryEntry {
            at_ms: 0,
            action,
            digest: digest.into(),
            store: "s".into(),
            prefix: "p:".into(),
            by: None,
            host: String::new(),
        }
    }

    #[test]
    fn rollbacks_go_back_one_version_each() {
        use HistoryAction::{Deploy, Remove, Rollback};
        let mut history = vec![entry(Deploy, "a"), entry(Deploy, "b"), entry(Deploy, "c")];
        assert_eq!(stack(&history), ["a", "b", "c"]);
        history.push(entry(Rollback, "b"));
        assert_eq!(stack(&history), ["a", "b"]);
        history.push(entry(Rollback, "a"));
        assert_eq!(stack(&history), ["a"]);
        history.push(entry(Deploy, "d"));
        assert_eq!(stack(&history), ["a", "d"]);
        history.push(entry(Remove, "d"));
        assert_eq!(stack(&history), Vec::<&str>::new());
    }

    #[test]
    fn deployers_are_held_to_their_participants_and_stores() {
        let open = Deployer::default();
        assert!(open.may("x", Some("orders")).is_ok());
        let ci = Deployer {
            name: Some("ci".into()),
            participants: Some(vec!["inventory".into()]),
            stores: Some(vec!["orders".into()]),
        };
        assert!(ci.may("inventory", Some("orders")).is_ok());
        let err = ci.may("payments", None).unwrap_err().to_string();
        assert!(err.contains("`ci`") && err.contains("`payments`"), "{err}");
        let err = ci.may("inventory", Some("ledger")).unwrap_err().to_string();
        assert!(err.contains("store `ledger`"), "{err}");
        let all = Deployer {
            participants: Some(vec!["*".into()]),
            stores: Some(vec!["*".into()]),
            ..ci
        };
        assert!(all.may("payments", Some("ledger")).is_ok());
    }
}
