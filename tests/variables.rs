//! Every variable in `holdfast::VARIABLES` against hostile values: empty, garbage, negative,
//! zero, huge, out of range, a fraction where whole seconds are required, unit typos. A bad
//! value is refused by `Config::from_lookup`, which reads nothing but the lookup it is given
//! (no network, no file), naming the variable and the values it accepts. The one rule for
//! empty values, for every variable: empty (or blank) counts as unset.

use std::collections::HashMap;

use holdfast::{Config, ConfigError, VARIABLES};

const URL: (&str, &str) = ("HOLDFAST_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs");

fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

/// The configuration with `variable=value` on top of a valid queue URL.
fn with(variable: &str, value: &str) -> Result<Config, ConfigError> {
    if variable == "HOLDFAST_QUEUE_URL" || variable == "COPILOT_QUEUE_URI" {
        parse(&[(variable, value)])
    } else {
        parse(&[URL, (variable, value)])
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refused,
    Accepted,
}
use Expect::{Accepted, Refused};

const HUGE_NUMBER: &str = "99999999999999999999999";

/// (class, value, expectation) for each kind of variable.
fn duration_cases(zero: Expect, whole_seconds: bool) -> Vec<(&'static str, String, Expect)> {
    let mut cases = vec![
        ("garbage", "soon".to_owned(), Refused),
        ("negative", "-5".to_owned(), Refused),
        ("zero", "0".to_owned(), zero),
        ("huge", HUGE_NUMBER.to_owned(), Refused),
        ("out of range", "1000h".to_owned(), Refused),
        ("fraction", "1.5".to_owned(), Refused),
        ("unit typo", "10sec".to_owned(), Refused),
        ("unit typo", "5 mins".to_owned(), Refused),
        ("unit typo", "2d".to_owned(), Refused),
    ];
    if whole_seconds {
        cases.push(("fraction of a second", "1500ms".to_owned(), Refused));
    }
    cases
}

fn integer_cases(max: u64) -> Vec<(&'static str, String, Expect)> {
    vec![
        ("garbage", "lots".to_owned(), Refused),
        ("negative", "-1".to_owned(), Refused),
        ("zero", "0".to_owned(), Refused),
        ("huge", HUGE_NUMBER.to_owned(), Refused),
        ("out of range", (max + 1).to_string(), Refused),
        ("fraction", "1.5".to_owned(), Refused),
        ("unit typo", "10x".to_owned(), Refused),
        ("in range", max.to_string(), Accepted),
    ]
}

fn word_cases(typo: &str) -> Vec<(&'static str, String, Expect)> {
    vec![
        ("garbage", "%%%".to_owned(), Refused),
        ("negative", "-1".to_owned(), Refused),
        ("zero", "0".to_owned(), Refused),
        ("huge", "x".repeat(100_000), Refused),
        ("unit typo", typo.to_owned(), Refused),
    ]
}

fn url_cases() -> Vec<(&'static str, String, Expect)> {
    vec![
        ("garbage", "jobs".to_owned(), Refused),
        ("negative", "-1".to_owned(), Refused),
        ("zero", "0".to_owned(), Refused),
        ("huge", format!("https://{}", "a".repeat(100_000)), Refused),
        ("out of range", "ftp://sqs.eu-west-1.amazonaws.com/1/jobs".to_owned(), Refused),
        ("typo", "memory:/jobs".to_owned(), Refused),
    ]
}

fn cases_for(variable: &str) -> Vec<(&'static str, String, Expect)> {
    match variable {
        "HOLDFAST_QUEUE_URL" | "COPILOT_QUEUE_URI" | "HOLDFAST_DEAD_LETTER_QUEUE_URL" => url_cases(),
        "COPILOT_TOPIC_QUEUE_URIS" => vec![
            ("garbage", "orders".to_owned(), Refused),
            ("negative", "-1".to_owned(), Refused),
            ("zero", "0".to_owned(), Refused),
            ("huge", format!("{{\"q\": \"{}\"}}", "a".repeat(100_000)), Refused),
            ("wrong shape", "[\"https://sqs.eu-west-1.amazonaws.com/1/q\"]".to_owned(), Refused),
            ("typo", "{'q': 'https://sqs.eu-west-1.amazonaws.com/1/q'}".to_owned(), Refused),
        ],
        "HOLDFAST_EXIT_WHEN_IDLE" => duration_cases(Refused, false),
        "HOLDFAST_CONCURRENCY" => integer_cases(10_000),
        "HOLDFAST_ACK_CONCURRENCY" => integer_cases(64),
        "HOLDFAST_RECEIVE_CONCURRENCY" => integer_cases(1_000),
        "HOLDFAST_PROTECTION_EXPIRES_IN_MINUTES" => integer_cases(2880),
        "HOLDFAST_WAIT_TIME" => {
            let mut c = duration_cases(Accepted, true);
            c.push(("out of range", "21".to_owned(), Refused));
            c
        }
        "HOLDFAST_VISIBILITY_TIMEOUT" => duration_cases(Refused, true),
        "HOLDFAST_HEARTBEAT_INTERVAL" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "11s".to_owned(), Refused)); // over a third of 30 s
            c
        }
        "HOLDFAST_HANDLER_TIMEOUT" => duration_cases(Refused, false),
        "HOLDFAST_STOP_TIMEOUT" => {
            let mut c = duration_cases(Refused, true);
            c.push(("out of range", "9".to_owned(), Refused));
            c
        }
        "HOLDFAST_DRAIN_TIMEOUT" => duration_cases(Accepted, true),
        "HOLDFAST_SHUTDOWN_RECEIVE" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "21s".to_owned(), Refused));
            c.push(("word typo", "wiat".to_owned(), Refused));
            c
        }
        "HOLDFAST_BACKOFF_MIN" => duration_cases(Accepted, true),
        "HOLDFAST_BACKOFF_MAX" => duration_cases(Refused, true), // below the 2 s minimum
        "HOLDFAST_BATCH_WINDOW" => {
            let mut c = duration_cases(Accepted, false);
            c.push(("out of range", "2s".to_owned(), Refused));
            c
        }
        "HOLDFAST_ACK_INTERVAL" => {
            let mut c = duration_cases(Accepted, false);
            c.push(("out of range", "11s".to_owned(), Refused));
            c
        }
        "HOLDFAST_SQS_TIMEOUT" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "500ms".to_owned(), Refused));
            c.push(("out of range", "301s".to_owned(), Refused));
            c
        }
        "HOLDFAST_LOG_FORMAT" => word_cases("jsno"),
        // A filter that does not parse; which bare words count as filters is RUST_LOG's own
        // grammar (tracing's EnvFilter).
        "RUST_LOG" => vec![
            ("garbage", "holdfast=loud".to_owned(), Refused),
            ("unit typo", "holdfast=inof".to_owned(), Refused),
            ("huge", format!("holdfast={}", "x".repeat(100_000)), Refused),
        ],
        "HOLDFAST_PROTECTION" => word_cases("agnet"),
        "HOLDFAST_PROTECTION_MODE" => word_cases("strcit"),
        "HOLDFAST_PROTECTION_REFRESH_BEFORE" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "60m".to_owned(), Refused)); // not less than the 60 min expiry
            c
        }
        "HOLDFAST_PROTECTION_MAINTAIN" => {
            let mut c = duration_cases(Accepted, false);
            c.push(("out of range", "49h".to_owned(), Refused));
            c
        }
        "HOLDFAST_PROTECTION_SHARED_DIR" => vec![
            ("garbage", "relative/dir".to_owned(), Refused),
            ("negative", "-1".to_owned(), Refused),
            ("zero", "0".to_owned(), Refused),
            ("typo", "~/protection".to_owned(), Refused),
        ],
        "HOLDFAST_PROTECTION_LEASE_TTL" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "2h".to_owned(), Refused));
            c
        }
        "HOLDFAST_PROTECTION_MAX_HOLD" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "59s".to_owned(), Refused)); // under the 1 min minimum
            c.push(("out of range", "49h".to_owned(), Refused));
            c.push(("word typo", "of".to_owned(), Refused));
            c
        }
        "HOLDFAST_PROTECTION_HOLD_GAP" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "2h".to_owned(), Refused));
            c
        }
        "HOLDFAST_LOG_MESSAGE_CONTENT" => word_cases("of"),
        "HOLDFAST_PROGRESS_INTERVAL" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "50ms".to_owned(), Refused));
            c.push(("word typo", "of".to_owned(), Refused));
            c
        }
        "HOLDFAST_METRICS" => word_cases("emff"),
        "HOLDFAST_METRICS_NAMESPACE" => vec![
            ("garbage", "AWS:holdfast".to_owned(), Refused),
            ("huge", "x".repeat(256), Refused),
            ("control character", "jobs\u{7}".to_owned(), Refused),
            ("in range", "MyApp/Workers".to_owned(), Accepted),
        ],
        "HOLDFAST_METRICS_INTERVAL" => duration_cases(Refused, true),
        "HOLDFAST_HEALTH_FILE" => vec![
            ("garbage", "health.json".to_owned(), Refused),
            ("negative", "-1".to_owned(), Refused),
            ("zero", "0".to_owned(), Refused),
            ("typo", "~/health.json".to_owned(), Refused),
            ("in range", "/tmp/holdfast-health.json".to_owned(), Accepted),
        ],
        "HOLDFAST_HEALTH_THRESHOLD" => {
            let mut c = duration_cases(Refused, false);
            c.push(("out of range", "13h".to_owned(), Refused));
            c
        }
        // Outside ECS (no ECS_CONTAINER_METADATA_URI_V4) every interval is refused too.
        "HOLDFAST_DEPLOYMENT_CHECK" => {
            let mut c = duration_cases(Refused, false);
            c.push(("outside ECS", "60s".to_owned(), Refused));
            c.push(("off", "off".to_owned(), Accepted));
            c
        }
        "HOLDFAST_SYSTEM_ATTRIBUTES" => vec![
            ("garbage", "lots".to_owned(), Refused),
            ("typo", "SenderID".to_owned(), Refused),
            ("one unknown in a list", "SenderId,ReceiveCount".to_owned(), Refused),
            ("in range", "SenderId, SequenceNumber".to_owned(), Accepted),
            ("all", "All".to_owned(), Accepted),
        ],
        other => panic!("{other} is in holdfast::VARIABLES but has no row in this table: add one"),
    }
}

#[test]
fn every_variable_refuses_hostile_values_naming_itself_and_what_it_accepts() {
    let mut tried = 0;
    let mut failures = Vec::new();
    for variable in VARIABLES {
        let cases = cases_for(variable);
        assert!(cases.iter().filter(|c| c.2 == Refused).count() >= 3, "{variable}: too few hostile values");
        for (class, value, expect) in cases {
            tried += 1;
            let shown =
                if value.len() > 40 { format!("{}… ({} bytes)", &value[..40], value.len()) } else { value.clone() };
            match (with(variable, &value), expect) {
                (Ok(_), Accepted) => {}
                (Ok(_), Refused) => failures.push(format!("{variable}={shown:?} ({class}) was accepted")),
                (Err(e), Accepted) => failures.push(format!("{variable}={shown:?} ({class}) was refused: {e}")),
                (Err(e), Refused) => {
                    let text = e.to_string();
                    if e.variable() != *variable {
                        failures
                            .push(format!("{variable}={shown:?} ({class}): the error names {}: {text}", e.variable()));
                    } else if !text.starts_with(&format!("{variable}=")) || !text.contains("expected") {
                        failures.push(format!("{variable} ({class}): {text:?} does not name the variable"));
                    } else if e.expected().trim().is_empty() {
                        failures.push(format!("{variable} ({class}): no accepted values in {text:?}"));
                    }
                }
            }
        }
    }
    println!("{tried} values tried over {} variables", VARIABLES.len());
    assert!(failures.is_empty(), "{} of {tried}:\n{}", failures.len(), failures.join("\n"));
}

/// The rule for empty values, the same for every variable: empty or blank is unset.
#[test]
fn an_empty_or_blank_value_counts_as_unset_for_every_variable() {
    let baseline = format!("{:?}", parse(&[URL]).unwrap());
    for variable in VARIABLES {
        for empty in ["", "  ", "\t"] {
            match *variable {
                "HOLDFAST_QUEUE_URL" | "COPILOT_QUEUE_URI" => {
                    let e = parse(&[(variable, empty)]).expect_err("no queue URL");
                    assert_eq!(e.variable(), "HOLDFAST_QUEUE_URL");
                    assert!(e.to_string().contains("is not set"), "{e}");
                }
                _ => {
                    let c = with(variable, empty).unwrap_or_else(|e| panic!("{variable}={empty:?}: {e}"));
                    assert_eq!(format!("{c:?}"), baseline, "{variable}={empty:?} is not the same as unset");
                }
            }
        }
    }
}
