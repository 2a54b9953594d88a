//! Scale-in protection settings, parsed from `HOLDFAST_PROTECTION*` variables.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, human, parse_duration, parse_int};

/// ECS's ceiling for `ExpiresInMinutes`: 48 hours.
pub(crate) const MAX_EXPIRY_MINUTES: u32 = 2880;

/// Which way scale-in protection is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProtectionBackend {
    /// The ECS agent endpoint when running in ECS (`ECS_AGENT_URI` is set), otherwise off.
    #[default]
    Auto,
    /// `PUT ${ECS_AGENT_URI}/task-protection/v1/state`: no IAM permission needed.
    Agent,
    /// The ECS API (`UpdateTaskProtection`) with the task role; the cluster and task ARN come
    /// from the task metadata endpoint v4.
    Api,
    /// Nothing is called; [`hold`](crate::Protection::hold) always succeeds at once.
    Off,
}

impl ProtectionBackend {
    /// The name used in `HOLDFAST_PROTECTION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Agent => "agent",
            Self::Api => "api",
            Self::Off => "off",
        }
    }
}

/// What the worker does while ECS refuses protection or cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProtectionMode {
    /// Take no new work until protection is in place again. The default: a job started
    /// without protection can be stopped half-way by the very scale-in or deployment that
    /// ECS is trying to carry out, and the messages not taken stay in the queue for other
    /// tasks, so waiting costs little. Refusals are what let a blocked deployment proceed.
    #[default]
    Strict,
    /// Log the refusal and carry on working without protection.
    Relaxed,
}

/// Scale-in protection settings (`HOLDFAST_PROTECTION*` variables).
///
/// Start from [`ProtectionConfig::default`] and change fields, or let
/// [`Config::from_env`](crate::Config::from_env) read them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtectionConfig {
    /// `HOLDFAST_PROTECTION`: `auto`, `agent`, `api` or `off` (default `auto`).
    pub backend: ProtectionBackend,
    /// `HOLDFAST_PROTECTION_MODE`: `strict` or `relaxed` (default `strict`, see
    /// [`ProtectionMode::Strict`] for why).
    pub mode: ProtectionMode,
    /// `HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES`: how long each call protects the task, 1 to
    /// 2880 (default 60). Shorter bounds how long a wedged worker can block a deployment;
    /// longer means fewer refresh calls during long jobs.
    pub expires_in_minutes: u32,
    /// `HOLDFAST_PROTECTION_REFRESH_BEFORE`: while work runs, protection is renewed once this
    /// little of it is left (default: a third of the expiry). Less than the expiry.
    pub refresh_before: Duration,
    /// `HOLDFAST_PROTECTION_MAINTAIN`: once no work is in flight, protection is kept this long
    /// before it is released, so bursts of short jobs do not toggle it (default 30 s, longer
    /// than one 20 s long poll). Zero releases at once.
    pub maintain: Duration,
    /// `HOLDFAST_PROTECTION_SHARED_DIR`: a directory shared by every worker process of the
    /// task (a task volume). When set, they share one protection state through it.
    pub shared_dir: Option<PathBuf>,
    /// `HOLDFAST_PROTECTION_LEASE_TTL`: in shared-directory mode, how long a process that
    /// stopped renewing its registration (hung, or its lock could not be checked) still
    /// counts (default 30 s). Each process renews every third of it.
    pub lease_ttl: Duration,
    /// `HOLDFAST_PROTECTION_MAX_HOLD`: the bounded hold. After the task has been protected
    /// this long without a break, the worker takes no new work, lets the work in flight
    /// finish (for up to [`hold_drain`](Self::hold_drain)), releases protection and stays
    /// unprotected for [`hold_gap`](Self::hold_gap) before it takes work again: an opening
    /// for a deployment or scale-in that needs no IAM permission. `off` (the default) or a
    /// duration from 1 min to 48 h.
    pub max_hold: Option<Duration>,
    /// `HOLDFAST_PROTECTION_HOLD_GAP`: how long the bounded hold leaves the task unprotected
    /// (default 30 s, from 1 s to 1 h).
    pub hold_gap: Duration,
    /// How long the bounded hold waits for the work in flight before it releases protection
    /// anyway. The worker sets it to its drain timeout (`HOLDFAST_DRAIN_TIMEOUT`), so the
    /// opening waits no longer for running work than a shutdown would (default 25 s).
    pub hold_drain: Duration,
    /// `ECS_AGENT_URI`, set by ECS: the agent endpoint's base URI.
    pub agent_uri: Option<String>,
    /// `ECS_CONTAINER_METADATA_URI_V4`, set by ECS: the task metadata endpoint.
    pub metadata_uri: Option<String>,
}

const DEFAULT_EXPIRY_MINUTES: u32 = 60;
/// Long enough for ECS to see the task unprotected and pick it for a waiting scale-in or
/// deployment, short enough to cost under 1 % of an hour's throughput.
const DEFAULT_HOLD_GAP: Duration = Duration::from_secs(30);

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            backend: ProtectionBackend::Auto,
            mode: ProtectionMode::Strict,
            expires_in_minutes: DEFAULT_EXPIRY_MINUTES,
            refresh_before: default_refresh(DEFAULT_EXPIRY_MINUTES),
            maintain: Duration::from_secs(30),
            shared_dir: None,
            lease_ttl: Duration::from_secs(30),
            max_hold: None,
            hold_gap: DEFAULT_HOLD_GAP,
            hold_drain: Duration::from_secs(25),
            agent_uri: None,
            metadata_uri: None,
        }
    }
}

fn default_refresh(minutes: u32) -> Duration {
    Duration::from_secs(u64::from(minutes) * 60 / 3)
}

impl ProtectionConfig {
    /// The protection period as a duration.
    pub fn expiry(&self) -> Duration {
        Duration::from_secs(u64::from(self.expires_in_minutes) * 60)
    }

    /// Reads the protection settings alone from the process environment, for using
    /// [`Protection`](crate::Protection) without the queue worker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first variable that is invalid, with the values it
    /// accepts.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    pub(crate) fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self {
            agent_uri: get("ECS_AGENT_URI").map(|v| v.trim().to_owned()),
            metadata_uri: get("ECS_CONTAINER_METADATA_URI_V4").map(|v| v.trim().to_owned()),
            ..Self::default()
        };
        if let Some(v) = get("HOLDFAST_PROTECTION") {
            config.backend = match v.trim().to_ascii_lowercase().as_str() {
                "auto" => ProtectionBackend::Auto,
                "agent" => ProtectionBackend::Agent,
                "api" => ProtectionBackend::Api,
                "off" => ProtectionBackend::Off,
                _ => return Err(ConfigError::new("HOLDFAST_PROTECTION", Some(&v), "auto, agent, api or off")),
            };
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_MODE") {
            config.mode = match v.trim().to_ascii_lowercase().as_str() {
                "strict" => ProtectionMode::Strict,
                "relaxed" => ProtectionMode::Relaxed,
                _ => return Err(ConfigError::new("HOLDFAST_PROTECTION_MODE", Some(&v), "strict or relaxed")),
            };
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES") {
            config.expires_in_minutes = parse_int("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES", &v, 1, MAX_EXPIRY_MINUTES)?;
        }
        let expiry = config.expiry();
        config.refresh_before = match get("HOLDFAST_PROTECTION_REFRESH_BEFORE") {
            Some(v) => parse_duration(
                "HOLDFAST_PROTECTION_REFRESH_BEFORE",
                &v,
                Duration::from_secs(1),
                expiry - Duration::from_secs(1),
                false,
            )
            .map_err(|e| {
                let expected = format!("{} (less than HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES)", e.expected());
                ConfigError::new("HOLDFAST_PROTECTION_REFRESH_BEFORE", Some(&v), expected)
            })?,
            None => default_refresh(config.expires_in_minutes),
        };
        if let Some(v) = get("HOLDFAST_PROTECTION_MAINTAIN") {
            config.maintain = parse_duration(
                "HOLDFAST_PROTECTION_MAINTAIN",
                &v,
                Duration::ZERO,
                Duration::from_secs(u64::from(MAX_EXPIRY_MINUTES) * 60),
                false,
            )?;
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_SHARED_DIR") {
            let path = PathBuf::from(v.trim());
            if !path.is_absolute() {
                return Err(ConfigError::new("HOLDFAST_PROTECTION_SHARED_DIR", Some(&v), "an absolute directory path"));
            }
            config.shared_dir = Some(path);
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_LEASE_TTL") {
            config.lease_ttl = parse_duration(
                "HOLDFAST_PROTECTION_LEASE_TTL",
                &v,
                Duration::from_secs(1),
                Duration::from_secs(3600),
                false,
            )?;
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_MAX_HOLD") {
            const EXPECTED: &str = "off, or a duration (such as 1h or 90m) from 1m to 48h";
            config.max_hold = match v.trim().to_ascii_lowercase().as_str() {
                "off" => None,
                _ => Some(
                    parse_duration(
                        "HOLDFAST_PROTECTION_MAX_HOLD",
                        &v,
                        Duration::from_secs(60),
                        Duration::from_secs(u64::from(MAX_EXPIRY_MINUTES) * 60),
                        false,
                    )
                    .map_err(|_| ConfigError::new("HOLDFAST_PROTECTION_MAX_HOLD", Some(&v), EXPECTED))?,
                ),
            };
            if config.max_hold.is_some() && config.backend == ProtectionBackend::Off {
                return Err(ConfigError::new(
                    "HOLDFAST_PROTECTION_MAX_HOLD",
                    Some(&v),
                    "off while HOLDFAST_PROTECTION=off (a bounded hold needs protection to bound)",
                ));
            }
        }
        if let Some(v) = get("HOLDFAST_PROTECTION_HOLD_GAP") {
            config.hold_gap = parse_duration(
                "HOLDFAST_PROTECTION_HOLD_GAP",
                &v,
                Duration::from_secs(1),
                Duration::from_secs(3600),
                false,
            )?;
        }
        match config.backend {
            ProtectionBackend::Agent if config.agent_uri.is_none() => {
                return Err(ConfigError::new(
                    "ECS_AGENT_URI",
                    None,
                    "the ECS agent's URI, which ECS sets inside a task (HOLDFAST_PROTECTION=agent needs it; \
                     use auto or off outside ECS)",
                ));
            }
            ProtectionBackend::Api if config.metadata_uri.is_none() => {
                return Err(ConfigError::new(
                    "ECS_CONTAINER_METADATA_URI_V4",
                    None,
                    "the task metadata endpoint, which ECS sets inside a task (HOLDFAST_PROTECTION=api reads the \
                     cluster and task ARN from it)",
                ));
            }
            _ => {}
        }
        Ok(config)
    }

    /// A one-line summary for start-up logs.
    pub(crate) fn describe(&self) -> String {
        let hold = match self.max_hold {
            Some(max) => format!(
                "; bounded hold: unprotected for {} after {} protected without a break",
                human(self.hold_gap),
                human(max)
            ),
            None => String::new(),
        };
        format!(
            "expires in {} min, refreshed {} before, maintained {} after the last job{hold}",
            self.expires_in_minutes,
            human(self.refresh_before),
            human(self.maintain)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<ProtectionConfig, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProtectionConfig::from_lookup(&|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, ProtectionConfig::default());
        assert_eq!(c.backend, ProtectionBackend::Auto);
        assert_eq!(c.mode, ProtectionMode::Strict);
        assert_eq!(c.expires_in_minutes, 60);
        assert_eq!(c.refresh_before, Duration::from_secs(20 * 60));
        assert_eq!(c.maintain, Duration::from_secs(30));
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.shared_dir, None);
        assert_eq!(c.max_hold, None);
        assert_eq!(c.hold_gap, Duration::from_secs(30));
    }

    #[test]
    fn the_bounded_hold_takes_off_or_a_duration_and_its_gap() {
        let c = parse(&[("HOLDFAST_PROTECTION_MAX_HOLD", "90m"), ("HOLDFAST_PROTECTION_HOLD_GAP", "45s")]).unwrap();
        assert_eq!(c.max_hold, Some(Duration::from_secs(90 * 60)));
        assert_eq!(c.hold_gap, Duration::from_secs(45));
        assert!(c.describe().contains("unprotected for 45s after 90m"), "{}", c.describe());
        assert_eq!(parse(&[("HOLDFAST_PROTECTION_MAX_HOLD", "OFF")]).unwrap().max_hold, None);
        let off = parse(&[("HOLDFAST_PROTECTION", "off"), ("HOLDFAST_PROTECTION_MAX_HOLD", "off")]).unwrap();
        assert_eq!(off.max_hold, None);
    }

    #[test]
    fn full_configuration_parses_and_captures_the_ecs_variables() {
        let c = parse(&[
            ("HOLDFAST_PROTECTION", "Agent"),
            ("HOLDFAST_PROTECTION_MODE", "relaxed"),
            ("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES", "2880"),
            ("HOLDFAST_PROTECTION_REFRESH_BEFORE", "1h"),
            ("HOLDFAST_PROTECTION_MAINTAIN", "0"),
            ("HOLDFAST_PROTECTION_SHARED_DIR", "/shared/protection"),
            ("HOLDFAST_PROTECTION_LEASE_TTL", "5s"),
            ("ECS_AGENT_URI", "http://169.254.170.2/api/abc"),
            ("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/abc"),
        ])
        .unwrap();
        assert_eq!(c.backend, ProtectionBackend::Agent);
        assert_eq!(c.mode, ProtectionMode::Relaxed);
        assert_eq!(c.expires_in_minutes, 2880);
        assert_eq!(c.refresh_before, Duration::from_secs(3600));
        assert_eq!(c.maintain, Duration::ZERO);
        assert_eq!(c.shared_dir, Some(PathBuf::from("/shared/protection")));
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.agent_uri.as_deref(), Some("http://169.254.170.2/api/abc"));
        assert_eq!(c.metadata_uri.as_deref(), Some("http://169.254.170.2/v4/abc"));
    }

    #[test]
    fn refresh_point_follows_the_expiry_unless_set() {
        let c = parse(&[("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES", "3")]).unwrap();
        assert_eq!(c.refresh_before, Duration::from_secs(60));
    }

    #[test]
    fn every_bad_value_names_its_variable_and_the_accepted_values() {
        let cases: &[(&str, &str, &str)] = &[
            ("HOLDFAST_PROTECTION", "ecs", "auto, agent, api or off"),
            ("HOLDFAST_PROTECTION_MODE", "lenient", "strict or relaxed"),
            ("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES", "0", "whole number from 1 to 2880"),
            ("HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES", "2881", "whole number from 1 to 2880"),
            ("HOLDFAST_PROTECTION_REFRESH_BEFORE", "60m", "less than HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES"),
            ("HOLDFAST_PROTECTION_MAINTAIN", "soon", "duration"),
            ("HOLDFAST_PROTECTION_SHARED_DIR", "relative/dir", "absolute directory path"),
            ("HOLDFAST_PROTECTION_LEASE_TTL", "2h", "from 1s to 1h"),
            ("HOLDFAST_PROTECTION_MAX_HOLD", "30s", "off, or a duration"),
            ("HOLDFAST_PROTECTION_MAX_HOLD", "49h", "from 1m to 48h"),
            ("HOLDFAST_PROTECTION_MAX_HOLD", "sometimes", "off, or a duration"),
            ("HOLDFAST_PROTECTION_HOLD_GAP", "0", "from 1s to 1h"),
            ("HOLDFAST_PROTECTION_HOLD_GAP", "2h", "from 1s to 1h"),
        ];
        for (variable, value, hint) in cases {
            let err = parse(&[(variable, value)]).expect_err(&format!("{variable}={value} must be refused"));
            assert_eq!(err.variable(), *variable, "{err}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("{variable}=\"{value}\" is invalid: expected")), "{text}");
            assert!(text.contains(hint), "{variable}: {text:?} should mention {hint:?}");
        }
        for variable in crate::VARIABLES.iter().filter(|v| v.starts_with("HOLDFAST_PROTECTION")) {
            assert!(cases.iter().any(|(v, _, _)| v == variable), "{variable} has no bad-value case");
        }
    }

    #[test]
    fn an_explicit_backend_needs_its_ecs_variable() {
        let e = parse(&[("HOLDFAST_PROTECTION", "agent")]).unwrap_err();
        assert_eq!(e.variable(), "ECS_AGENT_URI");
        let e = parse(&[("HOLDFAST_PROTECTION", "api")]).unwrap_err();
        assert_eq!(e.variable(), "ECS_CONTAINER_METADATA_URI_V4");
        let e = parse(&[("HOLDFAST_PROTECTION", "off"), ("HOLDFAST_PROTECTION_MAX_HOLD", "1h")]).unwrap_err();
        assert_eq!(e.variable(), "HOLDFAST_PROTECTION_MAX_HOLD");
        assert!(e.to_string().contains("HOLDFAST_PROTECTION=off"), "{e}");
        assert!(parse(&[("HOLDFAST_PROTECTION", "off")]).is_ok());
    }
}
