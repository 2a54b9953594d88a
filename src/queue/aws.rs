//! Opening an SQS queue: the AWS configuration is checked once at start-up, so that a mistake
//! that cannot heal stops the worker with one line saying what to set, instead of a receive
//! loop retrying forever.
//!
//! - No region: taken from the queue URL when it names one (`https://sqs.REGION.amazonaws.com/…`),
//!   else an error naming `AWS_REGION`.
//! - A queue URL on a host that is not AWS's, with no endpoint configured: requests go to that
//!   host (what the AWS SDK for JavaScript does), and the worker says so.
//! - The endpoint's host does not resolve: an error naming it and where it came from.
//! - No credentials provider produced credentials: an error naming the ways to give some.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sqs::config::Region;

use crate::{ConfigError, Error};

/// Longest the start-up checks wait for a DNS answer or for credentials before going on.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a queue URL the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueUrl<'a> {
    pub(crate) scheme: &'a str,
    /// `host` or `host:port`.
    pub(crate) authority: &'a str,
    pub(crate) host: &'a str,
}

pub(crate) fn parse(url: &str) -> Option<QueueUrl<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    let host = match authority.strip_prefix('[') {
        // [v6 address] or [v6 address]:port
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => match authority.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => authority,
        },
    };
    Some(QueueUrl { scheme, authority, host })
}

/// Whether `host` is one of AWS's own SQS endpoints (any partition).
pub(crate) fn is_aws_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    ["amazonaws.com", "amazonaws.com.cn", "api.aws", "c2s.ic.gov", "sc2s.sgov.gov"]
        .iter()
        .any(|suffix| host.ends_with(&format!(".{suffix}")))
}

/// The region an AWS queue URL names: `sqs.REGION.amazonaws.com` (also `.amazonaws.com.cn`,
/// FIPS and dual-stack forms), or the legacy `REGION.queue.amazonaws.com`.
pub(crate) fn region_in(host: &str) -> Option<String> {
    if !is_aws_host(host) {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let looks_like_region =
        |l: &str| l.matches('-').count() >= 2 && l.chars().last().is_some_and(|c| c.is_ascii_digit());
    let region = match labels.as_slice() {
        [region, "queue", ..] => Some(*region).filter(|r| looks_like_region(r)),
        [first, rest @ ..] if first.starts_with("sqs") => rest.iter().copied().find(|r| looks_like_region(r)),
        _ => None,
    };
    region.map(str::to_owned)
}

/// The endpoint the environment sets for SQS, if any.
fn configured_endpoint(aws: &aws_config::SdkConfig) -> Option<(String, &'static str)> {
    for variable in ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"] {
        if let Some(v) = std::env::var(variable).ok().filter(|v| !v.trim().is_empty()) {
            return Some((v, variable));
        }
    }
    aws.endpoint_url().map(|e| (e.to_owned(), "the AWS configuration's endpoint_url"))
}

/// Builds the SQS client for `url` from the loaded configuration, after the checks above.
/// `credentials_checked` is set once credentials were found, so several queues check once.
pub(crate) async fn client(
    url: &str,
    variable: &'static str,
    aws: &aws_config::SdkConfig,
    credentials_checked: &mut bool,
) -> Result<aws_sdk_sqs::Client, Error> {
    let parsed = parse(url).ok_or_else(|| {
        ConfigError::new(variable, Some(url), "an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE)")
    })?;
    let mut builder = aws_sdk_sqs::config::Builder::from(aws);
    let endpoint = configured_endpoint(aws);
    let mut region = aws.region().cloned();
    if region.is_none() {
        match region_in(parsed.host) {
            Some(named) => {
                tracing::info!(region = %named, "AWS_REGION is not set: using the region the queue URL names");
                region = Some(Region::new(named));
                builder = builder.region(region.clone());
            }
            None => {
                return Err(ConfigError::new(
                    "AWS_REGION",
                    None,
                    "an AWS region such as eu-west-1 (ECS sets it in every task; a queue URL of the form https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE names its own)",
                )
                .into());
            }
        }
    }
    let region = region.expect("checked above");
    // Where requests will go, and which setting said so.
    let (target, source) = match &endpoint {
        Some((endpoint, source)) => (endpoint.clone(), *source),
        None if !is_aws_host(parsed.host) => {
            let base = format!("{}://{}", parsed.scheme, parsed.authority);
            tracing::info!(
                endpoint = %base,
                "the queue URL names a host that is not AWS's and AWS_ENDPOINT_URL_SQS is not set: sending SQS requests to that host"
            );
            builder = builder.endpoint_url(&base);
            (base, variable)
        }
        None => (format!("https://sqs.{region}.amazonaws.com"), "AWS_REGION"),
    };
    check_resolves(&target, source).await?;
    if !*credentials_checked {
        check_credentials(aws).await?;
        *credentials_checked = true;
    }
    Ok(aws_sdk_sqs::Client::from_conf(builder.build()))
}

/// Resolves the endpoint's host once; a name that does not resolve at start-up is a mistake
/// to fix, not an outage to wait out. A lookup that times out only warns.
async fn check_resolves(endpoint: &str, source: &str) -> Result<(), Error> {
    let Some(parsed) = parse(endpoint) else {
        return Err(Error::Startup(format!("the SQS endpoint {endpoint:?} (from {source}) is not a URL")));
    };
    let port = parsed.authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let port = port.unwrap_or(if parsed.scheme == "http" { 80 } else { 443 });
    let lookup = async { tokio::net::lookup_host((parsed.host, port)).await.map(|a| a.count()) };
    match tokio::time::timeout(CHECK_TIMEOUT, lookup).await {
        Ok(Ok(found)) if found > 0 => Ok(()),
        Ok(Ok(_)) | Ok(Err(_)) => Err(Error::Startup(format!(
            "the SQS endpoint's host {} (from {source}) cannot be resolved: check the queue URL, AWS_ENDPOINT_URL_SQS and AWS_REGION",
            parsed.host
        ))),
        Err(_) => {
            tracing::warn!(host = parsed.host, "resolving the SQS endpoint's host timed out at start-up; going on");
            Ok(())
        }
    }
}

/// Asks the credentials chain once. None configured anywhere cannot heal; a provider that is
/// slow or failing (the instance metadata service, an SSO portal) may, so it only warns.
async fn check_credentials(aws: &aws_config::SdkConfig) -> Result<(), Error> {
    let no_credentials = || {
        Error::Startup(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an ECS task role (dummy values will do for a local SQS server)"
                .into(),
        )
    };
    let Some(provider) = aws.credentials_provider() else { return Err(no_credentials()) };
    match tokio::time::timeout(CHECK_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(CredentialsError::CredentialsNotLoaded(_))) => Err(no_credentials()),
        Ok(Err(error @ CredentialsError::InvalidConfiguration(_))) => Err(Error::Startup(format!(
            "the AWS credentials configuration is invalid: {}",
            aws_sdk_sqs::error::DisplayErrorContext(&error)
        ))),
        Ok(Err(error)) => {
            tracing::warn!(%error, "AWS credentials could not be loaded at start-up; going on, requests will retry");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("loading AWS credentials timed out at start-up; going on, requests will retry");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_what_the_checks_need() {
        let u = parse("http://127.0.0.1:9324/000000000000/jobs").unwrap();
        assert_eq!((u.scheme, u.authority, u.host), ("http", "127.0.0.1:9324", "127.0.0.1"));
        let u = parse("https://sqs.eu-west-1.amazonaws.com/123456789012/jobs").unwrap();
        assert_eq!(u.host, "sqs.eu-west-1.amazonaws.com");
        let u = parse("http://[::1]:9324/0/q").unwrap();
        assert_eq!((u.authority, u.host), ("[::1]:9324", "::1"));
        assert_eq!(parse("http://[::1]/0/q").unwrap().host, "::1");
        assert_eq!(parse("http://localhost/0/q").unwrap().host, "localhost");
        assert_eq!(parse("nope"), None);
    }

    #[test]
    fn the_region_is_read_from_aws_urls_only() {
        assert_eq!(region_in("sqs.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(region_in("sqs-fips.us-gov-west-1.amazonaws.com").as_deref(), Some("us-gov-west-1"));
        assert_eq!(region_in("sqs.cn-north-1.amazonaws.com.cn").as_deref(), Some("cn-north-1"));
        assert_eq!(region_in("sqs.ap-southeast-2.api.aws").as_deref(), Some("ap-southeast-2"));
        assert_eq!(region_in("us-east-2.queue.amazonaws.com").as_deref(), Some("us-east-2"));
        assert_eq!(region_in("sqs.amazonaws.com"), None);
        assert_eq!(region_in("localhost"), None);
        assert_eq!(region_in("sqs.eu-west-1.example.com"), None);
        assert!(is_aws_host("SQS.EU-WEST-1.AMAZONAWS.COM"));
        assert!(!is_aws_host("127.0.0.1"));
        assert!(!is_aws_host("notamazonaws.com"));
    }

    #[tokio::test]
    async fn loopback_resolves_and_a_bad_endpoint_is_named() {
        check_resolves("http://127.0.0.1:9324", "AWS_ENDPOINT_URL_SQS").await.unwrap();
        let err = check_resolves("not a url", "AWS_ENDPOINT_URL_SQS").await.unwrap_err();
        assert!(err.to_string().contains("AWS_ENDPOINT_URL_SQS"), "{err}");
    }
}
