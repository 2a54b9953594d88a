//! The Copilot manifests, judged by the worker's own configuration parser.
//!
//! Every `copilot/*/manifest.yml` is read the way Copilot reads it: YAML anchors and aliases
//! resolved (and refused on the StopTimeout, which is written as a plain number), a variable handed the text of its scalar whatever it looks like, and each
//! `environments:` override merged over the manifest. What each deployment would give the
//! container then goes through [`holdfast::Config::from_lookup`], with `COPILOT_QUEUE_URI`
//! set to a queue URL as Copilot sets it, so a value the worker would refuse at start-up
//! fails here instead, with the worker's own message.
//!
//! On top of what the parser checks, a deployment must hold together:
//! - every variable it sets is one the worker reads;
//! - `HOLDFAST_STOP_TIMEOUT` is the container's ECS stop timeout (the `taskdef_overrides`
//!   `ContainerDefinitions[0].StopTimeout`, ECS's 30 s when the manifest sets none), and the
//!   drain ends at least 5 s before it;
//! - the queue's `subscribe.queue.timeout` is the worker's `HOLDFAST_VISIBILITY_TIMEOUT`.
//!
//! Each manifest under `tests/manifests/` is broken in one way, named by its `# expect:`
//! lines, and must be refused for exactly those reasons: that is what shows these checks can
//! fail. `scripts/check_manifest.py` checks the rest of the deployment assets (Copilot's
//! schema, the Dockerfile, the addon policy).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast::{Config, VARIABLES};
use saphyr_parser::{Event, Parser, ScalarStyle};

/// Variables the application's own handlers read, set in the manifests next to the worker's.
/// The example worker reads none; a worker that reads its own lists them here.
const APPLICATION_VARIABLES: &[&str] = &[];

/// Names of the scale-in protection settings (`HOLDFAST_PROTECTION`, `HOLDFAST_PROTECTION_MODE`).
const PROTECTION_PREFIX: &str = "HOLDFAST_PROTECTION";

/// How long before ECS's SIGKILL the drain must end: the worker keeps this margin to release
/// messages, flush deletes and release protection.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// ECS's stop timeout when the task definition sets none.
const ECS_DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The service queue's visibility timeout when the manifest sets no `subscribe.queue.timeout`.
const COPILOT_DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

const STOP_TIMEOUT_PATH: &str = "ContainerDefinitions[0].StopTimeout";

// ------------------------------------------------------------------------------------------
// The manifests, and the fixtures that must be refused
// ------------------------------------------------------------------------------------------

#[test]
fn every_copilot_manifest_configures_the_worker() {
    let manifests = copilot_manifests();
    assert!(!manifests.is_empty(), "no copilot/*/manifest.yml found");
    let mut report = String::new();
    for manifest in &manifests {
        for problem in check_file(manifest) {
            report.push_str(&format!("{}: {problem}\n", display(manifest)));
        }
    }
    assert!(report.is_empty(), "the Copilot manifests would deploy a worker that is misconfigured:\n{report}");
}

#[test]
fn broken_manifests_are_refused_for_their_stated_reasons() {
    let fixtures = yaml_files(&root().join("tests/manifests"));
    assert!(fixtures.len() >= 10, "expected the negative fixtures in tests/manifests, found {}", fixtures.len());
    let mut report = String::new();
    for fixture in &fixtures {
        let text = fs::read_to_string(fixture).expect("readable fixture");
        let expected: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("# expect: ")).collect();
        let found = check_file(fixture);
        if let Some(complaint) = unmet(&expected, &found) {
            report.push_str(&format!("{}: {complaint}\n", display(fixture)));
            for line in &found {
                report.push_str(&format!("    found: {line}\n"));
            }
        }
    }
    assert!(report.is_empty(), "fixtures not refused as their # expect: lines say:\n{report}");
}

/// Why `found` does not match the `# expect:` lines: one problem for each, containing its text.
fn unmet(expected: &[&str], found: &[String]) -> Option<String> {
    if expected.is_empty() {
        return Some("has no # expect: line".into());
    }
    let mut used = vec![false; found.len()];
    let mut missing = Vec::new();
    for text in expected {
        match (0..found.len()).find(|&i| !used[i] && found[i].contains(text)) {
            Some(i) => used[i] = true,
            None => missing.push(*text),
        }
    }
    if !missing.is_empty() {
        Some(format!("expected, not found: {}", missing.join(" | ")))
    } else if found.len() != expected.len() {
        Some(format!("{} problems for {} expected", found.len(), expected.len()))
    } else {
        None
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn display(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

fn copilot_manifests() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(root().join("copilot"))
        .expect("copilot/ directory")
        .map(|entry| entry.expect("directory entry").path().join("manifest.yml"))
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    found.sort();
    found
}

// ------------------------------------------------------------------------------------------
// The checks
// ------------------------------------------------------------------------------------------

/// One thing wrong with a deployment: where in the manifest, and what.
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    place: String,
    message: String,
}

impl Problem {
    fn new(place: impl Into<String>, message: impl Into<String>) -> Self {
        Self { place: place.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// The problems of a manifest file, as lines: those of the manifest itself, then those each
/// environment adds (an environment inherits the manifest's problems; they are not repeated).
fn check_file(path: &Path) -> Vec<String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![format!("cannot read: {e}")],
    };
    let manifest = match parse_yaml(&text) {
        Ok(manifest @ Yaml::Map(_)) => manifest,
        Ok(_) => return vec!["not a YAML map".into()],
        Err(e) => return vec![format!("not valid YAML: {e}")],
    };
    let mut lines = Vec::new();
    let mut base = Vec::new();
    for (name, deployment) in deployments(&manifest) {
        let problems = check_deployment(&deployment);
        match name {
            None => {
                lines.extend(problems.iter().map(Problem::to_string));
                base = problems;
            }
            Some(env) => {
                lines.extend(problems.iter().filter(|p| !base.contains(p)).map(|p| format!("environments.{env}: {p}")))
            }
        }
    }
    lines
}

/// What the manifest deploys: to every environment without an override (`None`), and to each
/// environment of `environments:`, its override merged over the manifest.
fn deployments(manifest: &Yaml) -> Vec<(Option<String>, Yaml)> {
    let Yaml::Map(entries) = manifest else { return Vec::new() };
    let base = Yaml::Map(entries.iter().filter(|(k, _)| k != "environments").cloned().collect());
    let mut out = vec![(None, base.clone())];
    if let Some(Yaml::Map(envs)) = manifest.get("environments") {
        for (env, over) in envs {
            out.push((Some(env.clone()), merge(&base, over)));
        }
    }
    out
}

/// An environment's override over the manifest, as Copilot applies it: maps merge key by key,
/// anything else (a list such as `taskdef_overrides`, a scalar) replaces the manifest's, and a
/// null leaves the manifest's value.
fn merge(base: &Yaml, over: &Yaml) -> Yaml {
    match (base, over) {
        (Yaml::Map(base), Yaml::Map(over)) => {
            let mut entries = base.clone();
            for (key, value) in over {
                if value.is_null() {
                    continue;
                }
                match entries.iter_mut().find(|(k, _)| k == key) {
                    Some((_, existing)) => *existing = merge(existing, value),
                    None => entries.push((key.clone(), value.clone())),
                }
            }
            Yaml::Map(entries)
        }
        _ => over.clone(),
    }
}

/// Whether the worker reads `name`, given the variables it declares. Until the scale-in
/// protection settings are among them, any `HOLDFAST_PROTECTION*` name is let through; once
/// one is declared, only the declared ones are.
fn worker_reads(declared: &[&str], name: &str) -> bool {
    let protection_declared = declared.iter().any(|v| v.starts_with(PROTECTION_PREFIX));
    declared.contains(&name)
        || APPLICATION_VARIABLES.contains(&name)
        || (name.starts_with(PROTECTION_PREFIX) && !protection_declared)
}

/// The checks on what one deployment gives the container.
fn check_deployment(d: &Yaml) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut env: HashMap<String, String> = HashMap::new();

    match d.get("variables") {
        None => {}
        Some(Yaml::Map(variables)) => {
            for (name, value) in variables {
                if let Some(problem) = read_variable(name, value, &mut env) {
                    problems.push(problem);
                }
            }
        }
        Some(_) => problems.push(Problem::new("variables", "must be a map of names to values")),
    }

    let queue_uri = sample_queue_url(d);
    let config = Config::from_lookup(|name| match name {
        "COPILOT_QUEUE_URI" => Some(queue_uri.clone()),
        _ => env.get(name).cloned(),
    });
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            problems.push(Problem::new(format!("variables.{}", e.variable()), e.to_string()));
            return problems;
        }
    };

    // The drain deadline against ECS's SIGKILL.
    let (stop, stop_source) = stop_timeout(d, &mut problems);
    match config.stop_timeout {
        Some(set) if set != stop => problems.push(Problem::new(
            "variables.HOLDFAST_STOP_TIMEOUT",
            format!(
                "{} differs from {stop_source} ({}): the worker sets its drain deadline from it, so write the \
                 StopTimeout's number here too (HOLDFAST_STOP_TIMEOUT: \"N\")",
                human(set),
                human(stop)
            ),
        )),
        _ if config.drain_timeout + STOP_MARGIN > stop => {
            let (place, drain) = if env.contains_key("HOLDFAST_DRAIN_TIMEOUT") {
                (
                    "variables.HOLDFAST_DRAIN_TIMEOUT",
                    format!("the drain (HOLDFAST_DRAIN_TIMEOUT, {})", human(config.drain_timeout)),
                )
            } else {
                ("variables", format!("the default drain ({})", human(config.drain_timeout)))
            };
            problems.push(Problem::new(
                place,
                format!(
                    "{drain} must end at least {} before {stop_source} ({}): after the drain the worker still \
                     releases messages, flushes deletes and releases protection before ECS sends SIGKILL; set \
                     HOLDFAST_STOP_TIMEOUT to the stop timeout and the worker derives the drain from it",
                    human(STOP_MARGIN),
                    human(stop)
                ),
            ));
        }
        _ => {}
    }

    // The queue's default visibility timeout against the one the worker receives with.
    let queue_timeout = d.get("subscribe").and_then(|s| s.get("queue")).and_then(|q| q.get("timeout"));
    let (queue, written) = match queue_timeout.and_then(Yaml::text) {
        None => (Some(COPILOT_DEFAULT_QUEUE_TIMEOUT), "not set, so Copilot's default 30s,".to_owned()),
        Some(text) => (go_duration(text), text.to_owned()),
    };
    match queue {
        None => problems.push(Problem::new("subscribe.queue.timeout", format!("{written:?} is not a duration"))),
        Some(queue) if queue != config.visibility_timeout => problems.push(Problem::new(
            "subscribe.queue.timeout",
            format!(
                "{written} differs from the worker's HOLDFAST_VISIBILITY_TIMEOUT ({}): the worker receives with its \
                 own value, so keep the queue's default the same to avoid two visibility timeouts",
                human(config.visibility_timeout)
            ),
        )),
        Some(_) => {}
    }
    problems
}

/// Checks one entry of `variables`; adds the value Copilot would pass to the container to
/// `env`, unless it is only known at deploy time.
fn read_variable(name: &str, value: &Yaml, env: &mut HashMap<String, String>) -> Option<Problem> {
    let place = format!("variables.{name}");
    if !worker_reads(VARIABLES, name) {
        let known: Vec<&str> = VARIABLES.iter().chain(APPLICATION_VARIABLES).copied().collect();
        let message = match closest(name, &known) {
            Some(near) => format!("the worker does not read {name} (did you mean {near}?)"),
            None => format!("the worker does not read {name}; it reads {}", known.join(", ")),
        };
        return Some(Problem::new(place, message));
    }
    if name.starts_with("COPILOT_") {
        return Some(Problem::new(
            place,
            format!("Copilot sets {name} itself, from the service's resources; do not set it"),
        ));
    }
    if name == "HOLDFAST_QUEUE_URL" {
        return Some(Problem::new(
            place,
            "would make the worker ignore the queue Copilot creates (COPILOT_QUEUE_URI), which is also the only queue \
             the addon policy covers",
        ));
    }
    match value {
        Yaml::Scalar { .. } if value.is_null() => {
            Some(Problem::new(place, "has no value: the worker treats an empty value as unset; remove it"))
        }
        Yaml::Scalar { text, plain, .. } => {
            // `${NAME}` is filled in from the deploying shell: its value is not known here.
            if !text.contains("${") {
                env.insert(name.to_owned(), text.clone());
            }
            yaml11_bool(text).filter(|_| *plain).map(|b| {
                Problem::new(
                    place,
                    format!(
                        "unquoted, YAML 1.1 tools read {text} as the boolean {b} (Copilot passes the text on): quote \
                         it so every tool reads the same string"
                    ),
                )
            })
        }
        // A value imported from CloudFormation (from_cfn) is only known at deploy time.
        Yaml::Map(_) if value.get("from_cfn").is_some() => None,
        _ => Some(Problem::new(place, "must be a string, or from_cfn")),
    }
}

/// The container's stop timeout, and where it comes from.
fn stop_timeout(d: &Yaml, problems: &mut Vec<Problem>) -> (Duration, String) {
    let mut found = (ECS_DEFAULT_STOP_TIMEOUT, "ECS's default stop timeout".to_owned());
    let Some(Yaml::Seq(rules)) = d.get("taskdef_overrides") else { return found };
    for (i, rule) in rules.iter().enumerate() {
        if rule.get("path").and_then(Yaml::text) != Some(STOP_TIMEOUT_PATH) {
            continue;
        }
        if let Some(Yaml::Scalar { alias, anchored, .. }) = rule.get("value")
            && (*alias || *anchored)
        {
            let written = if *alias { "is an alias (*name)" } else { "carries an anchor (&name)" };
            problems.push(Problem::new(
                format!("taskdef_overrides[{i}].value"),
                format!(
                    "{written}: Copilot copies this node into the CloudFormation template, CloudFormation refuses \
                     YAML aliases, and whether Copilot resolves an anchor first is not documented; write the number \
                     itself, here and again in HOLDFAST_STOP_TIMEOUT (this check fails when the two differ)"
                ),
            ));
        }
        match rule.get("value").and_then(Yaml::text).map(|text| (text, text.parse::<u64>())) {
            Some((_, Ok(secs))) => {
                found = (Duration::from_secs(secs), format!("taskdef_overrides {STOP_TIMEOUT_PATH}"))
            }
            other => problems.push(Problem::new(
                format!("taskdef_overrides[{i}].value"),
                match other {
                    Some((text, _)) => format!("StopTimeout must be a whole number of seconds, not {text:?}"),
                    None => "StopTimeout must be a whole number of seconds".to_owned(),
                },
            )),
        }
    }
    found
}

/// The queue URL Copilot gives the container as `COPILOT_QUEUE_URI`.
fn sample_queue_url(d: &Yaml) -> String {
    let name = d.get("name").and_then(Yaml::text).unwrap_or("worker");
    let fifo = d
        .get("subscribe")
        .and_then(|s| s.get("queue"))
        .and_then(|q| q.get("fifo"))
        .is_some_and(|fifo| fifo.text() != Some("false"));
    let suffix = if fifo { ".fifo" } else { "" };
    format!("https://sqs.eu-west-1.amazonaws.com/123456789012/holdfast-test-{name}-EventsQueue-Z3KJ7TXQ1V2A{suffix}")
}

/// The boolean a YAML 1.1 reader (PyYAML, for one) makes of a plain scalar.
fn yaml11_bool(text: &str) -> Option<bool> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// The known name at most two edits from `name`, if one is.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().map(|k| (edit_distance(name, k), *k)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A duration as Copilot's manifest fields take it (Go's `time.ParseDuration`: 30s, 1m30s,
/// 500ms, 1.5h; a bare number only for 0).
fn go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (unit, scale) =
            [("ns", 1e0), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
                .into_iter()
                .filter(|(unit, _)| rest.starts_with(unit))
                .max_by_key(|(unit, _)| unit.len())?;
        rest = &rest[unit.len()..];
        nanos += number * scale;
    }
    (!text.is_empty()).then(|| Duration::from_nanos(nanos.round() as u64))
}

/// A duration the way the worker writes one.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

// ------------------------------------------------------------------------------------------
// YAML, as Copilot reads it
// ------------------------------------------------------------------------------------------

/// A YAML node with its aliases replaced by the nodes they name, and scalars kept as text:
/// Copilot's YAML library gives a variable the text of its scalar (`120`, `"120"` and
/// `off` reach the container as written).
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    /// A scalar's text, whether it was written plain (unquoted), whether it was written as
    /// an alias of another (`*name`), and whether it carries an anchor (`&name`).
    Scalar {
        text: String,
        plain: bool,
        alias: bool,
        anchored: bool,
    },
    Seq(Vec<Yaml>),
    /// Entries in document order.
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Yaml::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        let Yaml::Scalar { text, plain: true, .. } = self else { return false };
        matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}

/// A collection being read.
enum Open {
    Seq { anchor: usize, items: Vec<Yaml> },
    Map { anchor: usize, entries: Vec<(String, Yaml)>, key: Option<(String, bool, usize)>, merges: Vec<Yaml> },
}

/// Reads a one-document YAML file. Aliases are replaced by copies of what they name, merge
/// keys (`<<: *base`) add the entries the map does not set itself, and a duplicate key is an
/// error, as in Copilot's YAML library.
fn parse_yaml(source: &str) -> Result<Yaml, String> {
    let mut anchors: HashMap<usize, Yaml> = HashMap::new();
    let mut open: Vec<Open> = Vec::new();
    let mut documents: Vec<Yaml> = Vec::new();
    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| e.to_string())?;
        let line = span.start.line();
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, _) => (
                Yaml::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    alias: false,
                    anchored: anchor != 0,
                },
                anchor,
            ),
            Event::Alias(id) => match anchors.get(&id) {
                Some(Yaml::Scalar { text, plain, .. }) => {
                    (Yaml::Scalar { text: text.clone(), plain: *plain, alias: true, anchored: false }, 0)
                }
                Some(node) => (node.clone(), 0),
                None => return Err(format!("line {line}: alias of an unknown anchor")),
            },
            Event::SequenceStart(anchor, _) => {
                open.push(Open::Seq { anchor, items: Vec::new() });
                continue;
            }
            Event::MappingStart(anchor, _) => {
                open.push(Open::Map { anchor, entries: Vec::new(), key: None, merges: Vec::new() });
                continue;
            }
            Event::SequenceEnd => match open.pop() {
                Some(Open::Seq { anchor, items }) => (Yaml::Seq(items), anchor),
                _ => return Err(format!("line {line}: unbalanced sequence")),
            },
            Event::MappingEnd => match open.pop() {
                Some(Open::Map { anchor, entries, merges, .. }) => (Yaml::Map(with_merged(entries, merges)?), anchor),
                _ => return Err(format!("line {line}: unbalanced mapping")),
            },
            _ => continue,
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match open.last_mut() {
            None => documents.push(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, merges, .. }) => match key.take() {
                None => match node {
                    Yaml::Scalar { text, plain, .. } => *key = Some((text, plain, line)),
                    _ => return Err(format!("line {line}: a map key must be a scalar")),
                },
                Some((k, true, _)) if k == "<<" => merges.push(node),
                Some((k, _, key_line)) => {
                    if entries.iter().any(|(existing, _)| *existing == k) {
                        return Err(format!("line {key_line}: duplicate key {k:?}"));
                    }
                    entries.push((k, node));
                }
            },
        }
    }
    match documents.len() {
        1 => Ok(documents.remove(0)),
        n => Err(format!("{n} YAML documents, expected one")),
    }
}

/// `entries` plus, from each merge source in order, the entries whose keys are not set yet.
fn with_merged(mut entries: Vec<(String, Yaml)>, merges: Vec<Yaml>) -> Result<Vec<(String, Yaml)>, String> {
    for source in merges {
        let maps = match source {
            Yaml::Seq(items) => items,
            map => vec![map],
        };
        for map in maps {
            let Yaml::Map(more) = map else { return Err("a merge key (<<) takes a map or a list of maps".into()) };
            for (k, v) in more {
                if !entries.iter().any(|(existing, _)| *existing == k) {
                    entries.push((k, v));
                }
            }
        }
    }
    Ok(entries)
}

// ------------------------------------------------------------------------------------------
// The helpers themselves
// ------------------------------------------------------------------------------------------

fn scalar(text: &str, plain: bool) -> Yaml {
    Yaml::Scalar { text: text.into(), plain, alias: false, anchored: false }
}

#[test]
fn aliases_resolve_and_scalars_keep_their_text() {
    let doc = parse_yaml("a: &t 120\nb: *t\nc: '120'\nd: off\ne: 0x10\n").unwrap();
    assert_eq!(doc.get("a"), Some(&Yaml::Scalar { text: "120".into(), plain: true, alias: false, anchored: true }));
    assert_eq!(doc.get("b"), Some(&Yaml::Scalar { text: "120".into(), plain: true, alias: true, anchored: false }));
    assert_eq!(doc.get("c"), Some(&scalar("120", false)));
    assert_eq!(doc.get("d"), Some(&scalar("off", true)));
    assert_eq!(doc.get("e"), Some(&scalar("0x10", true)));
}

#[test]
fn merge_keys_fill_in_what_a_map_does_not_set() {
    let doc = parse_yaml("base: &b {A: '1', B: '2'}\nm:\n  B: '3'\n  <<: *b\n").unwrap();
    assert_eq!(
        doc.get("m"),
        Some(&Yaml::Map(vec![("B".into(), scalar("3", false)), ("A".into(), scalar("1", false))]))
    );
}

#[test]
fn broken_yaml_is_an_error() {
    assert!(parse_yaml("a: 1\na: 2\n").unwrap_err().contains("duplicate key \"a\""));
    assert!(parse_yaml("a: *nowhere\n").is_err());
    assert!(parse_yaml("a: 1\n---\nb: 2\n").unwrap_err().contains("2 YAML documents"));
}

#[test]
fn an_environment_merges_maps_and_replaces_lists() {
    let doc = parse_yaml(
        "name: w\nvariables: {A: '1', B: '2'}\ntaskdef_overrides: [{path: X, value: 1}]\n\
         environments:\n  prod:\n    variables: {B: '3', A: ~}\n    taskdef_overrides: [{path: Y, value: 2}]\n",
    )
    .unwrap();
    let all = deployments(&doc);
    assert_eq!(all.len(), 2);
    assert!(all[0].1.get("environments").is_none());
    let prod = &all[1].1;
    assert_eq!(all[1].0.as_deref(), Some("prod"));
    assert_eq!(prod.get("variables").and_then(|v| v.get("A")), Some(&scalar("1", false)));
    assert_eq!(prod.get("variables").and_then(|v| v.get("B")), Some(&scalar("3", false)));
    let Some(Yaml::Seq(rules)) = prod.get("taskdef_overrides") else { panic!("no taskdef_overrides") };
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].get("path").and_then(Yaml::text), Some("Y"));
}

#[test]
fn go_durations_read_like_copilot() {
    assert_eq!(go_duration("60s"), Some(Duration::from_secs(60)));
    assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(go_duration("0"), Some(Duration::ZERO));
    assert_eq!(go_duration("60"), None);
    assert_eq!(go_duration("s"), None);
    assert_eq!(go_duration(""), None);
    assert_eq!(human(Duration::from_secs(120)), "2m");
    assert_eq!(human(Duration::from_secs(115)), "115s");
}

#[test]
fn protection_names_pass_only_until_the_worker_declares_them() {
    assert!(worker_reads(&["HOLDFAST_CONCURRENCY"], "HOLDFAST_PROTECTION_MODE"));
    assert!(!worker_reads(&["HOLDFAST_CONCURRENCY"], "HOLDFAST_CONCURENCY"));
    let declared = ["HOLDFAST_PROTECTION", "HOLDFAST_PROTECTION_MODE"];
    assert!(worker_reads(&declared, "HOLDFAST_PROTECTION_MODE"));
    assert!(!worker_reads(&declared, "HOLDFAST_PROTECTION_MOOD"));
}
