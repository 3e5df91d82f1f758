//! The scheduler's data model: volumes, their specs and states, the machines they are placed on,
//! the node agent's reports, and the scheduler's error enum.
//!
//! Everything here is plain data with serde derives: the caller persists [`Volume`]s as JSON in its
//! embedded store and feeds [`Machine`]s to [`Scheduler::tick`](super::Scheduler::tick).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a volume asks for (or, as `actual`, what its node provides).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Bytes reserved for the volume on its node (a quota, not a usage).
    pub reserved_size: u64,
    /// Labels the node must carry, all of them. Kept sorted and free of duplicates: the
    /// scheduler normalises them on `create` and `patch`, so two specs that differ only in the
    /// order of their constraints are equal.
    pub constraints: Vec<String>,
}

impl Spec {
    /// A spec of `reserved_size` bytes with `constraints`.
    pub fn new<S: Into<String>>(reserved_size: u64, constraints: impl IntoIterator<Item = S>) -> Spec {
        Spec { reserved_size, constraints: constraints.into_iter().map(Into::into).collect() }
    }

    /// Sorts and deduplicates the constraints; refuses an empty label.
    pub(crate) fn normalised(mut self) -> Result<Spec, SchedError> {
        if self.constraints.iter().any(String::is_empty) {
            return Err(SchedError::InvalidSpec { reason: "a constraint is an empty label".into() });
        }
        self.constraints.sort_unstable();
        self.constraints.dedup();
        Ok(self)
    }

    /// True when every constraint is one of `labels`.
    pub fn fits_labels(&self, labels: &BTreeSet<String>) -> bool {
        self.constraints.iter().all(|c| labels.contains(c))
    }
}

/// The life cycle of a volume (table 4.2 of the reference). Serialised lower-case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// The engine must act: a patched volume (→ `ready`, `resizing` or `error`) or a clone
    /// waiting for its parent (→ `cloning`).
    Pending,
    /// Waiting for a node: unplaced (`node` is `None`), or placed and waiting for the node agent
    /// to create it (→ `ready`).
    Scheduling,
    /// The node agent is snapshotting the parent (→ `ready`).
    Cloning,
    /// Created on its node; only the API moves it on (patch, delete).
    Ready,
    /// The node agent is changing the quota (→ `pending` → `ready`).
    Resizing,
    /// The node agent is removing it (→ the record is removed).
    Deleting,
    /// Terminal: the engine or the node agent gave up; `error` says why. Only `delete` leaves it.
    Error,
}

impl VolumeState {
    /// Every state, in declaration order.
    pub const ALL: [VolumeState; 7] = [
        VolumeState::Pending,
        VolumeState::Scheduling,
        VolumeState::Cloning,
        VolumeState::Ready,
        VolumeState::Resizing,
        VolumeState::Deleting,
        VolumeState::Error,
    ];

    /// The lower-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Pending => "pending",
            VolumeState::Scheduling => "scheduling",
            VolumeState::Cloning => "cloning",
            VolumeState::Ready => "ready",
            VolumeState::Resizing => "resizing",
            VolumeState::Deleting => "deleting",
            VolumeState::Error => "error",
        }
    }
}

impl fmt::Display for VolumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One volume record, as persisted by the caller (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Allocated by the scheduler, increasing from 1.
    pub id: u64,
    /// Free-form name given at creation.
    pub name: String,
    /// What the user asked for.
    pub requested: Spec,
    /// What the node provides, once it has acted; `None` before.
    pub actual: Option<Spec>,
    /// Where the volume is in its life cycle.
    pub state: VolumeState,
    /// The machine holding (or asked to create) the volume.
    pub node: Option<String>,
    /// The volume this one is a clone of, until the clone is made.
    pub parent_id: Option<u64>,
    /// The last failure message from the node agent or the engine; empty when none.
    pub error: String,
    /// Node-agent failures since the volume was last created successfully.
    pub error_count: u32,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// Time of the last change, ns since the Unix epoch.
    pub updated_ns: u64,
    /// Why the scheduler cannot move the volume on yet (no machine fits, parent not usable);
    /// `None` when nothing blocks it.
    pub waiting_reason: Option<String>,
}

impl Volume {
    /// The node agent's back-off rule (Cobalt): after every `max_error_count` consecutive
    /// failures the agent leaves the volume alone until `max_error_timeout_ns` has passed since
    /// the last failure. `max_error_count == 0` disables the rule.
    pub fn agent_should_skip(&self, now_ns: u64, max_error_count: u32, max_error_timeout_ns: u64) -> bool {
        max_error_count != 0
            && self.error_count != 0
            && self.error_count.is_multiple_of(max_error_count)
            && now_ns.saturating_sub(self.updated_ns) < max_error_timeout_ns
    }
}

/// A machine as the caller sees it this tick (from the node agents' heartbeats).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Unique name; volumes refer to it in [`Volume::node`].
    pub name: String,
    /// Labels matched against [`Spec::constraints`].
    pub labels: BTreeSet<String>,
    /// Free bytes as last reported by the machine's agent (`total * max_fill − reservations`).
    pub available: u64,
    /// False once the machine's heartbeats stopped (the caller's TTL expired).
    pub alive: bool,
}

impl Machine {
    /// An alive machine.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        available: u64,
        labels: impl IntoIterator<Item = S>,
    ) -> Machine {
        Machine { name: name.into(), labels: labels.into_iter().map(Into::into).collect(), available, alive: true }
    }
}

/// What a node agent reports about a volume placed on it (the "node = me" rows of table 4.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "lowercase")]
pub enum Report {
    /// → `ready`. From `scheduling`: the volume was created (`actual = requested`,
    /// `error_count = 0`). From `cloning`: the snapshot was made (`parent_id` cleared,
    /// `actual.reserved_size = min(requested, the node's last reported available)`).
    Ready,
    /// → `pending`, from `resizing`: the quota was changed (`actual = requested`); the engine
    /// then moves the volume to `ready`.
    Resized,
    /// From `deleting`: the volume is gone from the node; its record is removed.
    Removed,
    /// The agent failed (from `scheduling`, `cloning`, `resizing` or `deleting`):
    /// `error_count += 1` and `error = message`. The state is kept (the agent retries, see
    /// [`Volume::agent_should_skip`]) unless `give_up`, which moves the volume to `error`.
    Failed {
        /// What went wrong, shown to the user.
        message: String,
        /// The agent will not retry: the volume goes to `error`.
        give_up: bool,
    },
}

impl Report {
    /// The action name used in [`SchedError::IllegalTransition`].
    pub fn action(&self) -> Action {
        match self {
            Report::Ready => Action::ReportReady,
            Report::Resized => Action::ReportResized,
            Report::Removed => Action::ReportRemoved,
            Report::Failed { .. } => Action::ReportFailed,
        }
    }
}

/// An operation that can be refused in a given state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `patch` (change the requested spec).
    Patch,
    /// `delete`.
    Delete,
    /// The node agent's [`Report::Ready`].
    ReportReady,
    /// The node agent's [`Report::Resized`].
    ReportResized,
    /// The node agent's [`Report::Removed`].
    ReportRemoved,
    /// The node agent's [`Report::Failed`].
    ReportFailed,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Patch => "patch",
            Action::Delete => "delete",
            Action::ReportReady => "report ready",
            Action::ReportResized => "report resized",
            Action::ReportRemoved => "report removed",
            Action::ReportFailed => "report failed",
        })
    }
}

/// Why a scheduler operation was refused. Nothing changed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchedError {
    /// No volume has this id (HTTP 404). It may have been deleted.
    NotFound {
        /// The id asked for.
        id: u64,
    },
    /// The operation is not allowed in the volume's current state (HTTP 409); table 4.2 lists
    /// the legal ones. Retry once the volume has moved on (e.g. patch after `ready`).
    IllegalTransition {
        /// The volume.
        id: u64,
        /// Its current state.
        from: VolumeState,
        /// What was refused.
        action: Action,
    },
    /// The volume still has clones that are not made yet (HTTP 409): delete them or wait until
    /// they are `ready`.
    ClonesPending {
        /// The volume.
        id: u64,
        /// The clones that name it as `parent_id`, in id order.
        clones: Vec<u64>,
    },
    /// The clone's parent does not exist (HTTP 404).
    ParentNotFound {
        /// The parent id given.
        parent: u64,
    },
    /// The clone's parent is in a state a clone cannot be taken from (`scheduling`, `deleting`,
    /// `error`; HTTP 409). Retry when it is `ready`.
    ParentUnusable {
        /// The parent.
        parent: u64,
        /// Its state.
        state: VolumeState,
    },
    /// The spec is malformed (HTTP 400); `reason` says how.
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// A patch asked for the spec the volume already has (HTTP 304): nothing to do.
    NotModified {
        /// The volume.
        id: u64,
    },
    /// A node agent reported on a volume that is not placed on it (HTTP 409). The volume was
    /// moved away (re-placement after `delay`, or healing after the node was seen dead); the
    /// agent should drop whatever it made for it.
    NotOwner {
        /// The volume.
        id: u64,
        /// The volume's node, if any.
        node: Option<String>,
        /// The machine that reported.
        machine: String,
    },
    /// A record given to `restore` cannot be used (id 0 or a duplicate id); nothing was
    /// restored. Fix the store.
    InvalidRestore {
        /// The record's id.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// All `u64` ids are used. Not expected to happen.
    IdsExhausted,
}

impl SchedError {
    /// The HTTP status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            SchedError::NotFound { .. } | SchedError::ParentNotFound { .. } => 404,
            SchedError::IllegalTransition { .. }
            | SchedError::ClonesPending { .. }
            | SchedError::ParentUnusable { .. }
            | SchedError::NotOwner { .. } => 409,
            SchedError::InvalidSpec { .. } => 400,
            SchedError::NotModified { .. } => 304,
            SchedError::InvalidRestore { .. } | SchedError::IdsExhausted => 500,
        }
    }
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedError::NotFound { id } => write!(f, "volume {id} not found"),
            SchedError::IllegalTransition { id, from, action } => {
                write!(f, "volume {id} is {from}: {action} is not allowed in that state")
            }
            SchedError::ClonesPending { id, clones } => {
                write!(f, "volume {id} has clones not made yet: {clones:?}")
            }
            SchedError::ParentNotFound { parent } => write!(f, "parent volume {parent} not found"),
            SchedError::ParentUnusable { parent, state } => {
                write!(f, "parent volume {parent} is {state}: cannot clone it in that state")
            }
            SchedError::InvalidSpec { reason } => write!(f, "invalid spec: {reason}"),
            SchedError::NotModified { id } => write!(f, "volume {id} already has this spec"),
            SchedError::NotOwner { id, node, machine } => match node {
                Some(n) => write!(f, "volume {id} is placed on {n}, not on {machine}"),
                None => write!(f, "volume {id} is not placed on any machine (report from {machine})"),
            },
            SchedError::InvalidRestore { id, reason } => write!(f, "cannot restore volume {id}: {reason}"),
            SchedError::IdsExhausted => f.write_str("volume ids exhausted"),
        }
    }
}

impl std::error::Error for SchedError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state declared after `s`: an exhaustive match, so a new state does not compile until
    /// it is placed here (and then the test below wants it in `ALL`).
    fn next_state(s: VolumeState) -> Option<VolumeState> {
        use VolumeState as V;
        match s {
            V::Pending => Some(V::Scheduling),
            V::Scheduling => Some(V::Cloning),
            V::Cloning => Some(V::Ready),
            V::Ready => Some(V::Resizing),
            V::Resizing => Some(V::Deleting),
            V::Deleting => Some(V::Error),
            V::Error => None,
        }
    }

    #[test]
    fn all_lists_every_state_in_declaration_order_with_unique_names() {
        let every: Vec<VolumeState> = std::iter::successors(Some(VolumeState::Pending), |&s| next_state(s)).collect();
        assert_eq!(every, VolumeState::ALL);
        assert!(VolumeState::ALL.windows(2).all(|w| w[0] < w[1]), "declaration order");
        let names: std::collections::BTreeSet<&str> = VolumeState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), VolumeState::ALL.len());
    }

    #[test]
    fn states_serialise_lower_case() {
        for s in VolumeState::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<VolumeState>(&j).unwrap(), s);
        }
    }

    #[test]
    fn volume_round_trips_as_json() {
        let v = Volume {
            id: 7,
            name: "db".into(),
            requested: Spec::new(10, ["ssd"]),
            actual: None,
            state: VolumeState::Scheduling,
            node: Some("m1".into()),
            parent_id: None,
            error: String::new(),
            error_count: 0,
            created_ns: 1,
            updated_ns: 2,
            waiting_reason: None,
        };
        let j = serde_json::to_string(&v).unwrap();
        assert!(j.contains("\"state\":\"scheduling\""), "{j}");
        assert_eq!(serde_json::from_str::<Volume>(&j).unwrap(), v);
    }

    #[test]
    fn spec_normalises_and_rejects_empty_labels() {
        assert_eq!(Spec::new(1, ["b", "a", "b"]).normalised().unwrap().constraints, ["a", "b"]);
        assert!(matches!(Spec::new(1, [""]).normalised(), Err(SchedError::InvalidSpec { .. })));
    }

    #[test]
    fn agent_backoff_rule() {
        let mut v: Volume = serde_json::from_str(
            r#"{"id":1,"name":"","requested":{"reserved_size":0,"constraints":[]},"actual":null,
                "state":"scheduling","node":"m","parent_id":null,"error":"x","error_count":3,
                "created_ns":0,"updated_ns":100,"waiting_reason":null}"#,
        )
        .unwrap();
        assert!(v.agent_should_skip(105, 3, 10));
        assert!(!v.agent_should_skip(110, 3, 10));
        assert!(!v.agent_should_skip(105, 0, 10));
        v.error_count = 4;
        assert!(!v.agent_should_skip(105, 3, 10));
    }
}
