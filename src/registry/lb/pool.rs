//! Pools: named lists of targets, each an ordered list of slots (primary first, then
//! fallbacks), with the options that shape a poll. [`Pool::parse`] reads the target string
//! `N,slotA,slotB;M,slotC;key=value` and validates it; [`Pool::to_target_string`] writes it
//! back, and a pool is serialised as that string.

use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::location::abs_max_dist;
use super::location::LEVELS;

/// Most targets a pool may have (the sum of the counts).
pub const MAX_TARGETS: u32 = 256;

/// One kind of target: `count` identical targets, each an ordered list of slots (primary
/// first, then fallbacks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// How many targets of this kind (≥ 1).
    pub count: u32,
    /// Slots, primary first (≥ 1).
    pub slots: Vec<String>,
}

/// Pool options (`key=value` in the target string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// `min_dist`, 1..=4, default 1: hard floor; fail rather than go below.
    pub min_dist: u32,
    /// `max_dist`, 1..=4, default 4: the distance tried first (clamped to the world's
    /// [`abs_max_dist`]).
    pub max_dist: u32,
    /// `warn_dist`, 0..=5, default 0: a selection at this distance or below is flawed.
    pub warn_dist: u32,
    /// `nearby_mode`, default false: try distances from `min_dist` upward (items close
    /// together) instead of from `max_dist` downward.
    pub nearby_mode: bool,
    /// `strict_location_constraint=A.B.C.D`: hard maxima of targets per DC, rack, host,
    /// volume; 0 at a level = the computed fair share. D is effectively 1 (two picks never share
    /// a location).
    pub strict_location_constraint: Option<[u32; 4]>,
    /// `fair_location_constraint=A.B.C.D`: soft maxima; exceeding one marks the item flawed.
    pub fair_location_constraint: Option<[u32; 4]>,
    /// `allow_distance_bypass`, default true: when a target's slot has fewer distinct
    /// locations at the tried distance than targets, relax one level (can unbalance sets).
    pub allow_distance_bypass: bool,
    /// `weighted_random_attempts`, 1..=64000, default 8: weighted draws before the scan.
    pub weighted_random_attempts: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            min_dist: 1,
            max_dist: LEVELS,
            warn_dist: 0,
            nearby_mode: false,
            strict_location_constraint: None,
            fair_location_constraint: None,
            allow_distance_bypass: true,
            weighted_random_attempts: 8,
        }
    }
}

/// A named pool. Serialised as `{name, targets}` with the target string, parsed (and so
/// validated) again when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PoolRepr", into = "PoolRepr")]
pub struct Pool {
    /// The pool name.
    pub name: String,
    /// The targets.
    pub targets: Vec<Target>,
    /// The options.
    pub options: PoolOptions,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolRepr {
    name: String,
    targets: String,
}

impl TryFrom<PoolRepr> for Pool {
    type Error = PoolError;
    fn try_from(r: PoolRepr) -> Result<Pool, PoolError> {
        Pool::parse(&r.name, &r.targets)
    }
}

impl From<Pool> for PoolRepr {
    fn from(p: Pool) -> PoolRepr {
        PoolRepr { targets: p.to_target_string(), name: p.name }
    }
}

/// Why a pool definition was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// No target at all.
    NoTargets,
    /// A target count that is not a number in 1..=256.
    BadCount(String),
    /// More than [`MAX_TARGETS`] targets in all.
    TooManyTargets(u64),
    /// A target without slots, or an empty slot name (`2,` or `2,,rawx`).
    EmptySlot(String),
    /// A `key=value` with an unknown key.
    UnknownOption(String),
    /// The same option twice.
    DuplicateOption(String),
    /// An option value that does not parse or is out of range.
    BadOptionValue {
        /// The option.
        key: String,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `min_dist` above `max_dist`.
    MinAboveMax {
        /// `min_dist`.
        min_dist: u32,
        /// `max_dist`.
        max_dist: u32,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::NoTargets => write!(f, "pool has no target"),
            PoolError::BadCount(t) => write!(f, "bad target count {t:?}: expected 1..={MAX_TARGETS}"),
            PoolError::TooManyTargets(n) => write!(f, "pool has {n} targets, more than {MAX_TARGETS}"),
            PoolError::EmptySlot(t) => write!(f, "target {t:?} has an empty slot name"),
            PoolError::UnknownOption(k) => write!(
                f,
                "unknown pool option {k:?} (known: min_dist, max_dist, warn_dist, nearby_mode, \
                 strict_location_constraint, fair_location_constraint, allow_distance_bypass, \
                 weighted_random_attempts)"
            ),
            PoolError::DuplicateOption(k) => write!(f, "pool option {k:?} given twice"),
            PoolError::BadOptionValue { key, value, expected } => {
                write!(f, "pool option {key}={value:?}: expected {expected}")
            }
            PoolError::MinAboveMax { min_dist, max_dist } => {
                write!(f, "pool min_dist {min_dist} is above max_dist {max_dist}")
            }
        }
    }
}

impl std::error::Error for PoolError {}

fn parse_u32_in(key: &str, value: &str, lo: u32, hi: u32, expected: &'static str) -> Result<u32, PoolError> {
    match value.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(PoolError::BadOptionValue { key: key.to_owned(), value: value.to_owned(), expected }),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, PoolError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(PoolError::BadOptionValue { key: key.to_owned(), value: value.to_owned(), expected: "a boolean" }),
    }
}

fn parse_constraint(key: &str, value: &str) -> Result<[u32; 4], PoolError> {
    let bad = || PoolError::BadOptionValue { key: key.to_owned(), value: value.to_owned(), expected: "A.B.C.D" };
    let mut out = [0u32; 4];
    let mut parts = value.split('.');
    for o in &mut out {
        *o = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

impl Pool {
    /// A pool from targets and options, validated as [`Pool::parse`] does.
    pub fn new(name: &str, targets: Vec<Target>, options: PoolOptions) -> Result<Pool, PoolError> {
        let pool = Pool { name: name.to_owned(), targets, options };
        pool.validate()?;
        Ok(pool)
    }

    fn validate(&self) -> Result<(), PoolError> {
        if self.targets.is_empty() {
            return Err(PoolError::NoTargets);
        }
        let mut total = 0u64;
        for t in &self.targets {
            if t.count == 0 || t.count > MAX_TARGETS {
                return Err(PoolError::BadCount(t.count.to_string()));
            }
            if t.slots.is_empty() || t.slots.iter().any(|s| s.is_empty()) {
                return Err(PoolError::EmptySlot(t.slots.join(",")));
            }
            total += u64::from(t.count);
        }
        if total > u64::from(MAX_TARGETS) {
            return Err(PoolError::TooManyTargets(total));
        }
        let o = &self.options;
        let check = |key: &str, v: u32, lo: u32, hi: u32, expected| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(PoolError::BadOptionValue { key: key.to_owned(), value: v.to_string(), expected })
            }
        };
        check("min_dist", o.min_dist, 1, 4, "1..=4")?;
        check("max_dist", o.max_dist, 1, 4, "1..=4")?;
        check("warn_dist", o.warn_dist, 0, 5, "0..=5")?;
        check("weighted_random_attempts", o.weighted_random_attempts, 1, 64000, "1..=64000")?;
        if o.min_dist > o.max_dist {
            return Err(PoolError::MinAboveMax { min_dist: o.min_dist, max_dist: o.max_dist });
        }
        Ok(())
    }

    /// Parses `N,slotA,slotB;M,slotC;key=value`. A target without a leading number counts 1.
    /// Bad counts, empty slot names, unknown or repeated options and out-of-range values are
    /// errors. Empty parts (`;;`, a trailing `;`) are skipped.
    pub fn parse(name: &str, s: &str) -> Result<Pool, PoolError> {
        let mut targets = Vec::new();
        let mut o = PoolOptions::default();
        let mut seen: Vec<&str> = Vec::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((k, v)) = part.split_once('=') {
                let (k, v) = (k.trim(), v.trim());
                if seen.contains(&k) {
                    return Err(PoolError::DuplicateOption(k.to_owned()));
                }
                seen.push(k);
                match k {
                    "min_dist" => o.min_dist = parse_u32_in(k, v, 1, 4, "1..=4")?,
                    "max_dist" => o.max_dist = parse_u32_in(k, v, 1, 4, "1..=4")?,
                    "warn_dist" => o.warn_dist = parse_u32_in(k, v, 0, 5, "0..=5")?,
                    "weighted_random_attempts" => {
                        o.weighted_random_attempts = parse_u32_in(k, v, 1, 64000, "1..=64000")?
                    }
                    "nearby_mode" => o.nearby_mode = parse_bool(k, v)?,
                    "allow_distance_bypass" => o.allow_distance_bypass = parse_bool(k, v)?,
                    "strict_location_constraint" => o.strict_location_constraint = Some(parse_constraint(k, v)?),
                    "fair_location_constraint" => o.fair_location_constraint = Some(parse_constraint(k, v)?),
                    _ => return Err(PoolError::UnknownOption(k.to_owned())),
                }
                continue;
            }
            let toks: Vec<&str> = part.split(',').map(str::trim).collect();
            let (count, slots) = match toks.split_first() {
                Some((first, rest)) if first.bytes().next().is_some_and(|b| b.is_ascii_digit()) => {
                    match first.parse::<u32>() {
                        Ok(c) if (1..=MAX_TARGETS).contains(&c) => (c, rest),
                        _ => return Err(PoolError::BadCount((*first).to_owned())),
                    }
                }
                _ => (1, &toks[..]),
            };
            if slots.is_empty() || slots.iter().any(|s| s.is_empty()) {
                return Err(PoolError::EmptySlot(part.to_owned()));
            }
            targets.push(Target { count, slots: slots.iter().map(|s| (*s).to_owned()).collect() });
        }
        Pool::new(name, targets, o)
    }

    /// The target string, options that differ from the defaults included; [`Pool::parse`]
    /// reads it back to an equal pool.
    pub fn to_target_string(&self) -> String {
        let mut parts: Vec<String> =
            self.targets.iter().map(|t| format!("{},{}", t.count, t.slots.join(","))).collect();
        let (o, d) = (&self.options, PoolOptions::default());
        let c = |a: [u32; 4]| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        if o.min_dist != d.min_dist {
            parts.push(format!("min_dist={}", o.min_dist));
        }
        if o.max_dist != d.max_dist {
            parts.push(format!("max_dist={}", o.max_dist));
        }
        if o.warn_dist != d.warn_dist {
            parts.push(format!("warn_dist={}", o.warn_dist));
        }
        if o.nearby_mode != d.nearby_mode {
            parts.push(format!("nearby_mode={}", o.nearby_mode));
        }
        if let Some(a) = o.strict_location_constraint {
            parts.push(format!("strict_location_constraint={}", c(a)));
        }
        if let Some(a) = o.fair_location_constraint {
            parts.push(format!("fair_location_constraint={}", c(a)));
        }
        if o.allow_distance_bypass != d.allow_distance_bypass {
            parts.push(format!("allow_distance_bypass={}", o.allow_distance_bypass));
        }
        if o.weighted_random_attempts != d.weighted_random_attempts {
            parts.push(format!("weighted_random_attempts={}", o.weighted_random_attempts));
        }
        parts.join(";")
    }

    /// The number of targets (the sum of the counts).
    pub fn target_count(&self) -> u32 {
        self.targets.iter().map(|t| t.count).sum()
    }
}
