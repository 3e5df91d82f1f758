//! What the admin API asks of the control thread, and what it answers: [`Command`]s, their
//! typed [`Reply`]s and [`CommandError`]s. A leaf module: the API imports it, and the control
//! thread executes it. Nothing here knows HTTP; the API maps each error to its status.
//!
//! A command travels as a [`Call`] with a reply channel; a reply to a write is sent only once
//! the change is durable (by the store's writer thread, which completes the call).

use std::time::Duration;

use crossbeam::channel::{self, Sender};
use serde::Serialize;

use super::failover::FailoverRecord;
use super::services::{PushAction, ServiceEntry};
use super::snapshot::AmphoraHealth;
use super::volumes::{VolumeCreate, VolumePatch, VolumeReport};
use crate::proto::octavia::Uuid;
use crate::registry::ServiceView;
use crate::sched::{Volume, VolumeState};

/// Why a command failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// No such amphora, record, or object; the message names it.
    NotFound(String),
    /// The request is not acceptable (a bad value); the message names the field.
    Invalid(String),
    /// The current state does not allow it (an illegal transition, an existing name).
    Conflict(String),
    /// The change asked for is already in effect; nothing changed.
    NotModified(String),
    /// The store did not confirm the write; it may or may not be durable. Retry.
    Store(String),
    /// The control thread did not answer in time (stopping, or stalled). Retry later.
    Unavailable,
    /// Cluster mode: only the leader acts on this; the message names the leader if one is
    /// known. Retry (on the leader, or once one is elected).
    NotLeader(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NotFound(m)
            | CommandError::Invalid(m)
            | CommandError::Conflict(m)
            | CommandError::NotModified(m) => f.write_str(m),
            CommandError::Store(m) => write!(f, "the store did not confirm the write: {m}"),
            CommandError::Unavailable => f.write_str("the control thread is not answering"),
            CommandError::NotLeader(m) => write!(f, "not the leader: {m}"),
        }
    }
}

impl std::error::Error for CommandError {}

/// One service's outcome in a registration request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceOutcome {
    /// Service type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `ip:port`.
    pub addr: String,
    /// Score after the change (register, lock, unlock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<i32>,
    /// Locked after the change (register, lock, unlock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    /// Created by this call (register).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// False for an unlock of an unknown service (unlock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// `removed`, `not_found` or `kept_newer` (deregister).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
}

/// What a command answers. Serialises to the admin API's JSON bodies.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A failover record (`Failover`, `FailoverRecord`).
    Failover(FailoverRecord),
    /// `Forget`.
    Forgotten {
        /// The amphora forgotten.
        forgotten: Uuid,
    },
    /// An amphora's health after `Configure`.
    Amphora(AmphoraHealth),
    /// A page of failover records.
    Failovers {
        /// The records.
        failovers: Vec<FailoverRecord>,
        /// The id to pass as `marker` for the next page (`None`: last page).
        next_marker: Option<u64>,
    },
    /// `Reload`.
    Reloaded {
        /// Always true.
        reloaded: bool,
    },
    /// `ServicePush`.
    Services {
        /// One outcome per service, in request order.
        services: Vec<ServiceOutcome>,
    },
    /// `ServiceFlush`.
    Flushed {
        /// The type.
        #[serde(rename = "type")]
        type_name: String,
        /// Services removed.
        flushed: usize,
    },
    /// `ServiceList`.
    ServiceList(Vec<ServiceView>),
    /// `ServiceTypes`.
    ServiceTypes(Vec<String>),
    /// `ServiceResolve`.
    Resolved {
        /// `ip:port`.
        addr: String,
    },
    /// `PoolCreate`.
    Pool {
        /// Name.
        name: String,
        /// Its targets, normalised.
        targets: String,
    },
    /// `PoolDelete`.
    PoolDeleted {
        /// The name.
        deleted: String,
    },
    /// One volume (create, get, patch, delete, report).
    Volume(Box<Volume>),
    /// `VolumeList`.
    Volumes {
        /// The volumes.
        volumes: Vec<Volume>,
    },
}

/// What a command answers.
pub type CommandResult = Result<Reply, CommandError>;

/// A request from the admin API to the control thread, by the part that executes it.
#[derive(Debug)]
pub enum Command {
    /// Amphorae and failovers.
    Fleet(FleetCommand),
    /// Services and pools.
    Registry(RegistryCommand),
    /// Volumes.
    Volumes(VolumeCommand),
    /// New settings (SIGHUP).
    Reload(Box<super::ControlConfig>),
}

impl Command {
    /// Whether, in cluster mode, only the leader may execute it (it changes state the
    /// leader alone writes to etcd: volumes, pools, locks, deregistrations, manual failovers).
    /// The admin API forwards these to the leader; a member that does not lead refuses them
    /// before changing anything ([`CommandError::NotLeader`]).
    pub fn is_leader_write(&self) -> bool {
        match self {
            Command::Fleet(FleetCommand::Failover(_)) => true,
            Command::Registry(RegistryCommand::Push { action, .. }) => *action != PushAction::Register,
            Command::Registry(
                RegistryCommand::Flush(_) | RegistryCommand::PoolCreate { .. } | RegistryCommand::PoolDelete(_),
            ) => true,
            Command::Volumes(c) => !matches!(c, VolumeCommand::List(_) | VolumeCommand::Get(_)),
            _ => false,
        }
    }

    /// Whether it only reads: answered at once, without waiting for a store commit of rows
    /// that other changes marked (a read has no writes of its own to make durable).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Fleet(FleetCommand::Failovers { .. } | FleetCommand::Record(_))
                | Command::Registry(
                    RegistryCommand::List { .. } | RegistryCommand::Types | RegistryCommand::Resolve { .. }
                )
                | Command::Volumes(VolumeCommand::List(_) | VolumeCommand::Get(_))
        )
    }
}

/// The amphora commands.
#[derive(Debug)]
pub enum FleetCommand {
    /// Start a failover of an amphora now.
    Failover(Uuid),
    /// Forget an amphora (it comes back as new if it beats again).
    Forget(Uuid),
    /// Set an amphora's expected listener count, load balancer and zone (`None`: leave as is).
    Configure {
        /// Amphora.
        id: Uuid,
        /// `Some(None)` clears.
        expected_listeners: Option<Option<u32>>,
        /// `Some(None)` clears.
        load_balancer: Option<Option<Uuid>>,
        /// The group its liveness is judged in; `Some(None)` clears (its load balancer's, or
        /// the default group).
        zone: Option<Option<String>>,
    },
    /// List failover records after `marker`, oldest first.
    Failovers {
        /// Records with an id above this.
        marker: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// One failover record.
    Record(u64),
}

/// The service registry's commands.
#[derive(Debug)]
pub enum RegistryCommand {
    /// Register, lock, unlock or deregister services.
    Push {
        /// What to do.
        action: PushAction,
        /// The services.
        entries: Vec<ServiceEntry>,
    },
    /// Remove every service of a type.
    Flush(String),
    /// The services of a type.
    List {
        /// Type.
        type_name: String,
        /// With `stat.*` tags.
        full: bool,
    },
    /// The configured service types.
    Types,
    /// The address of a service id.
    Resolve {
        /// Type.
        type_name: String,
        /// Service id.
        id: String,
    },
    /// Create (or with `force` replace) a pool.
    PoolCreate {
        /// Name.
        name: String,
        /// Target string `N,slotA,slotB;M,slotC;key=value`.
        targets: String,
        /// Replace an existing pool.
        force: bool,
    },
    /// Delete a pool.
    PoolDelete(String),
}

/// The scheduler's commands.
#[derive(Debug)]
pub enum VolumeCommand {
    /// Create a volume.
    Create(VolumeCreate),
    /// List volumes, optionally of one state.
    List(Option<VolumeState>),
    /// One volume.
    Get(u64),
    /// Resize or re-constrain a `ready` volume.
    Patch(u64, VolumePatch),
    /// Delete a volume.
    Delete(u64),
    /// A machine-side agent's report.
    Report(u64, VolumeReport),
}

/// A command with its reply channel. The reply comes once the change is durable.
#[derive(Debug)]
pub struct Call {
    /// The command.
    pub command: Command,
    /// Where the answer goes.
    pub reply: Sender<CommandResult>,
}

/// How long a caller waits for the control thread's durable answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a command and waits (at most [`CALL_TIMEOUT`]) for its durable answer.
pub fn call(tx: &Sender<Call>, command: Command) -> CommandResult {
    let (reply, rx) = channel::bounded(1);
    tx.send(Call { command, reply }).map_err(|_| CommandError::Unavailable)?;
    rx.recv_timeout(CALL_TIMEOUT).map_err(|_| CommandError::Unavailable)?
}
