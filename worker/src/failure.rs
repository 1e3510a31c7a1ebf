//! Why a job did not produce an image, as its status will tell it: every
//! error of the render path, the egress proxy and the URL policy becomes a
//! [`JobFailure`] here, and nowhere else. A failure is either final (the
//! record is written now) or retryable (the message comes back later; on
//! its last attempt [`JobFailure::last_attempt`] says what the record
//! reads).

use url2png_core::job::{ContractError, ErrorCode};
use url2png_core::keys::{FailureReason, Phase};
use url2png_core::policy::PolicyError;

use crate::egress::{EgressEvent, Unreached};
use crate::render::{NetError, RenderError};

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub reason: FailureReason,
    /// Whether a later attempt may succeed.
    pub retryable: bool,
    /// One sentence for a person.
    pub message: String,
    /// What an operator needs beyond the message.
    pub detail: Option<String>,
    pub phase: Option<Phase>,
    pub http_status: Option<u16>,
    /// The host or address the policy refused.
    pub refused: Option<String>,
}

impl JobFailure {
    fn new(reason: FailureReason, retryable: bool, message: impl Into<String>) -> Self {
        Self {
            reason,
            retryable,
            message: message.into(),
            detail: None,
            phase: None,
            http_status: None,
            refused: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The message broke the contract.
    pub fn contract(error: &ContractError) -> Self {
        let reason = if error.code == ErrorCode::UnsupportedVersion {
            FailureReason::UnsupportedVersion
        } else {
            FailureReason::InvalidMessage
        };
        Self::new(reason, false, error.to_string())
    }

    /// The capture could not be made into the job's thumbnail.
    pub fn thumbnail(detail: String) -> Self {
        Self::new(
            FailureReason::RenderFailed,
            true,
            "The capture could not be resized into the thumbnail.",
        )
        .detail(detail)
    }

    /// The job has JavaScript of its own and this worker runs none.
    pub fn scripts_off() -> Self {
        Self::new(
            FailureReason::InvalidMessage,
            false,
            "The job runs JavaScript in the page (script or wait_for_expression) and this worker does not allow it (URL2PNG_ALLOW_SCRIPTS).",
        )
    }

    /// The URL policy refused the job's URL before any browser saw it.
    pub fn policy(error: &PolicyError) -> Self {
        let mut failure = Self::new(
            FailureReason::BlockedByPolicy,
            false,
            "The URL is not allowed by the egress policy.",
        )
        .detail(error.to_string());
        failure.refused = error.refused();
        failure
    }

    /// Something outside the page failed (no page came free, the browser
    /// died, the store failed): try again.
    pub fn transient(detail: impl Into<String>) -> Self {
        Self::new(
            FailureReason::AttemptsExhausted,
            true,
            "The job failed on every attempt for reasons outside the page.",
        )
        .detail(detail)
    }

    /// The job's time ran out in `phase`. Out of time while waiting for a
    /// condition, the condition never held.
    pub fn timeout(phase: Phase, waiting_for: Option<&str>, budget_ms: u128) -> Self {
        let mut failure = match (phase, waiting_for) {
            (Phase::Wait, Some(what)) => Self::new(
                FailureReason::WaitFailed,
                true,
                format!("Waited for {what}; it did not happen within the job's {budget_ms} ms."),
            ),
            (phase, _) => Self::new(
                FailureReason::Timeout,
                true,
                format!(
                    "The job's timeout of {budget_ms} ms ran out during {}.",
                    match phase {
                        Phase::Page => "the wait for a browser page",
                        Phase::Navigation => "navigation",
                        Phase::Wait => "the wait after loading",
                        Phase::Capture => "capture",
                    }
                ),
            ),
        };
        failure.phase = Some(phase);
        failure
    }

    /// The browser went away under the page.
    pub fn browser_died() -> Self {
        Self::new(
            FailureReason::BrowserCrashed,
            true,
            "The browser crashed while rendering the page.",
        )
    }

    /// A failed render, with what the page's proxy refused or could not
    /// reach (in order) to tell why the page itself did not load.
    pub fn render(error: &RenderError, egress: &[EgressEvent]) -> Self {
        let text = error.to_string();
        match error {
            RenderError::Navigation { error: net, text } => navigation(*net, text, egress),
            RenderError::Blocked { reason } => blocked(egress).unwrap_or_else(|| {
                Self::new(
                    FailureReason::BlockedByPolicy,
                    false,
                    "The page's address is not allowed by the egress policy.",
                )
                .detail(reason.clone())
            }),
            RenderError::RefusedInBrowser { url, reason } => {
                let mut failure = Self::new(
                    FailureReason::BlockedByPolicy,
                    false,
                    "The page led to an address the egress policy does not allow.",
                )
                .detail(format!("{url}: {reason}"));
                failure.refused = url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .or_else(|| Some(url.clone()));
                failure
            }
            RenderError::Unreached(kind) => unreached(*kind, last_unreached(egress)),
            RenderError::HttpStatus(code) => {
                let mut failure = Self::new(
                    FailureReason::HttpError,
                    false,
                    format!("The page answered HTTP {code}."),
                );
                failure.http_status = Some(*code);
                failure
            }
            RenderError::AuthRequired => Self::new(
                FailureReason::NavigationFailed,
                false,
                "The page asks for credentials.",
            ),
            RenderError::InvalidSelector(selector) => Self::new(
                FailureReason::InvalidMessage,
                false,
                format!("`{selector}` is not a valid CSS selector."),
            ),
            RenderError::InvalidOption { .. } => {
                Self::new(FailureReason::InvalidMessage, false, text)
            }
            RenderError::ElementNotFound { selector, why } => Self::new(
                FailureReason::ElementNotFound,
                false,
                format!(
                    "No element to capture: `{selector}` ({why}). To wait for it, add wait_for_selector."
                ),
            ),
            RenderError::Script { what, text } => Self::new(
                FailureReason::ScriptError,
                false,
                format!("The job's {what} threw an exception."),
            )
            .detail(text.clone()),
            RenderError::Unavailable(missing) => Self::new(
                FailureReason::RenderFailed,
                false,
                format!(
                    "This worker cannot do what the job asks: {} is not installed.",
                    missing.what
                ),
            )
            .detail(missing.to_string()),
            RenderError::Crashed => Self::new(
                FailureReason::BrowserCrashed,
                true,
                "The page's renderer crashed.",
            ),
            RenderError::BrowserGone(_) => Self::new(
                FailureReason::BrowserCrashed,
                true,
                "The browser exited during the job.",
            )
            .detail(text),
            RenderError::CdpTimeout(name, _) | RenderError::Cdp(name, _)
                if name.starts_with("Page.captureScreenshot")
                    || name.starts_with("Page.getLayoutMetrics") =>
            {
                Self::new(
                    FailureReason::RenderFailed,
                    true,
                    "The browser could not capture the page.",
                )
                .detail(text)
            }
            RenderError::CdpTimeout(..) | RenderError::Cdp(..) => Self::transient(text),
        }
    }

    /// What the record of a retryable failure reads when it happened on
    /// the job's last attempt: its own reason where it has one that says
    /// what happened every time, `attempts_exhausted` otherwise.
    pub fn last_attempt(mut self) -> Self {
        let keeps = matches!(
            self.reason,
            FailureReason::Timeout
                | FailureReason::WaitFailed
                | FailureReason::BrowserCrashed
                | FailureReason::ConnectionFailed
                | FailureReason::RenderFailed
                | FailureReason::AttemptsExhausted
        );
        if !keeps {
            let detail = match self.detail.take() {
                Some(d) => format!("{} ({d})", self.message),
                None => self.message.clone(),
            };
            self.reason = FailureReason::AttemptsExhausted;
            self.message = "The job failed on every attempt.".into();
            self.detail = Some(detail);
        }
        self.retryable = false;
        self
    }

    /// For logs and retries: the message and the detail.
    pub fn describe(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{}: {}", self.reason.as_str(), detail),
            None => format!("{}: {}", self.reason.as_str(), self.message),
        }
    }
}

/// The page's navigation failed with `net`. Through the egress proxy, a
/// tunnel or connection error says only that the proxy answered no; the
/// proxy's own log says why.
fn navigation(net: NetError, text: &str, egress: &[EgressEvent]) -> JobFailure {
    let through_proxy = matches!(
        net,
        NetError::Tunnel
            | NetError::Connection
            | NetError::NameNotResolved
            | NetError::ResolverFailed
            | NetError::BlockedByClient
    );
    if through_proxy && let Some(last) = egress.last() {
        return match last {
            EgressEvent::Blocked(_) => blocked(egress).expect("a refusal"),
            EgressEvent::Unreached { kind, .. } => unreached(*kind, last_unreached(egress)),
        };
    }
    let failure = match net {
        NetError::NameNotResolved => JobFailure::new(
            FailureReason::DnsError,
            false,
            "The page's host name does not exist.",
        ),
        NetError::ResolverFailed => JobFailure::new(
            FailureReason::ConnectionFailed,
            true,
            "The page's host name could not be resolved.",
        ),
        NetError::Tls => JobFailure::new(
            FailureReason::TlsError,
            false,
            "The page's TLS certificate or handshake is not valid.",
        ),
        NetError::Connection | NetError::Tunnel => JobFailure::new(
            FailureReason::ConnectionFailed,
            true,
            "The page's host could not be reached.",
        ),
        NetError::BlockedByClient => JobFailure::new(
            FailureReason::BlockedByPolicy,
            false,
            "The page's address is not allowed by the egress policy.",
        ),
        NetError::Aborted => JobFailure::new(
            FailureReason::NavigationFailed,
            false,
            "The URL did not load as a page (it may be a download).",
        ),
        NetError::Permanent => JobFailure::new(
            FailureReason::NavigationFailed,
            false,
            "The browser could not load the page.",
        ),
        NetError::Other => JobFailure::new(
            FailureReason::NavigationFailed,
            true,
            "The browser could not load the page.",
        ),
    };
    failure.detail(text.to_owned())
}

/// The proxy's latest refusal, as the page's failure.
fn blocked(egress: &[EgressEvent]) -> Option<JobFailure> {
    egress.iter().rev().find_map(|event| match event {
        EgressEvent::Blocked(b) => {
            let refused = b.refused.clone().unwrap_or_else(|| b.target.clone());
            let mut failure = JobFailure::new(
                FailureReason::BlockedByPolicy,
                false,
                format!("The address {refused} is not allowed by the egress policy."),
            )
            .detail(format!("{}: {}", b.target, b.reason));
            failure.refused = Some(refused);
            Some(failure)
        }
        EgressEvent::Unreached { .. } => None,
    })
}

/// The proxy's latest "not reached": its target and detail.
fn last_unreached(egress: &[EgressEvent]) -> Option<(&str, &str)> {
    egress.iter().rev().find_map(|event| match event {
        EgressEvent::Unreached { target, detail, .. } => Some((target.as_str(), detail.as_str())),
        EgressEvent::Blocked(_) => None,
    })
}

fn unreached(kind: Unreached, seen: Option<(&str, &str)>) -> JobFailure {
    let host = seen
        .map(|(target, _)| target.rsplit_once(':').map_or(target, |(h, _)| h))
        .unwrap_or("the page's host");
    let failure = match kind {
        Unreached::NameNotFound => JobFailure::new(
            FailureReason::DnsError,
            false,
            format!("The host name {host} does not exist."),
        ),
        Unreached::Resolver => JobFailure::new(
            FailureReason::ConnectionFailed,
            true,
            format!("The host name {host} could not be resolved."),
        ),
        Unreached::Connect => JobFailure::new(
            FailureReason::ConnectionFailed,
            true,
            format!("{host} could not be reached."),
        ),
    };
    match seen {
        Some((target, detail)) => failure.detail(format!("{target}: {detail}")),
        None => failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::Blocked;

    fn nav(code: &str) -> RenderError {
        RenderError::Navigation {
            error: NetError::parse(code),
            text: code.into(),
        }
    }

    fn refused(target: &str, refused: &str) -> EgressEvent {
        EgressEvent::Blocked(Blocked {
            target: target.into(),
            reason: format!("{refused} is refused: private"),
            refused: Some(refused.into()),
        })
    }

    fn not_reached(target: &str, kind: Unreached) -> EgressEvent {
        EgressEvent::Unreached {
            target: target.into(),
            kind,
            detail: "said so".into(),
        }
    }

    #[test]
    fn a_tunnel_error_takes_the_proxys_reason() {
        let tunnel = nav("net::ERR_TUNNEL_CONNECTION_FAILED");
        let f = JobFailure::render(&tunnel, &[refused("10.0.0.1:443", "10.0.0.1")]);
        assert_eq!(
            (f.reason, f.retryable, f.refused.as_deref()),
            (FailureReason::BlockedByPolicy, false, Some("10.0.0.1"))
        );
        assert!(f.message.contains("10.0.0.1"), "{}", f.message);
        let f = JobFailure::render(
            &tunnel,
            &[not_reached("example.com:443", Unreached::NameNotFound)],
        );
        assert_eq!((f.reason, f.retryable), (FailureReason::DnsError, false));
        assert!(f.message.contains("example.com"), "{}", f.message);
        let f = JobFailure::render(&tunnel, &[not_reached("a.test:443", Unreached::Resolver)]);
        assert_eq!(
            (f.reason, f.retryable),
            (FailureReason::ConnectionFailed, true)
        );
        // The latest event counts: a refused sub-resource before the page's
        // own failure does not make the page refused.
        let f = JobFailure::render(
            &tunnel,
            &[
                refused("10.0.0.1:80", "10.0.0.1"),
                not_reached("b.test:443", Unreached::Connect),
            ],
        );
        assert_eq!(
            (f.reason, f.retryable),
            (FailureReason::ConnectionFailed, true)
        );
        // Without the proxy's word, a tunnel error is a connection failure.
        let f = JobFailure::render(&tunnel, &[]);
        assert_eq!(f.reason, FailureReason::ConnectionFailed);
    }

    #[test]
    fn browser_errors_map_to_their_classes() {
        for (code, reason, retryable) in [
            ("net::ERR_NAME_NOT_RESOLVED", FailureReason::DnsError, false),
            (
                "net::ERR_CERT_AUTHORITY_INVALID",
                FailureReason::TlsError,
                false,
            ),
            (
                "net::ERR_CONNECTION_REFUSED",
                FailureReason::ConnectionFailed,
                true,
            ),
            (
                "net::ERR_TOO_MANY_REDIRECTS",
                FailureReason::NavigationFailed,
                false,
            ),
            ("net::ERR_ABORTED", FailureReason::NavigationFailed, false),
            (
                "net::ERR_BLOCKED_BY_CLIENT",
                FailureReason::BlockedByPolicy,
                false,
            ),
            ("net::ERR_UNHEARD_OF", FailureReason::NavigationFailed, true),
        ] {
            let f = JobFailure::render(&nav(code), &[]);
            assert_eq!((f.reason, f.retryable), (reason, retryable), "{code}");
            assert_eq!(f.detail.as_deref(), Some(code));
        }
        let f = JobFailure::render(&RenderError::HttpStatus(503), &[]);
        assert_eq!(
            (f.reason, f.http_status),
            (FailureReason::HttpError, Some(503))
        );
    }

    #[test]
    fn timeouts_say_their_phase_and_waits_that_never_held_fail_the_wait() {
        let f = JobFailure::timeout(Phase::Navigation, None, 500);
        assert_eq!(
            (f.reason, f.phase, f.retryable),
            (FailureReason::Timeout, Some(Phase::Navigation), true)
        );
        let f = JobFailure::timeout(Phase::Wait, Some("`#x` to be visible"), 500);
        assert_eq!(f.reason, FailureReason::WaitFailed);
        assert!(f.message.contains("#x"));
        // Out of time in the wait phase but not waiting for a condition (in
        // the delay): a timeout, not a wait that failed.
        let f = JobFailure::timeout(Phase::Wait, None, 500);
        assert_eq!(f.reason, FailureReason::Timeout);
        let f = JobFailure::timeout(Phase::Capture, Some("`#x` to be visible"), 500);
        assert_eq!(f.reason, FailureReason::Timeout);
    }

    #[test]
    fn the_last_attempt_keeps_a_telling_reason_and_sums_up_the_rest() {
        let timeout = JobFailure::timeout(Phase::Navigation, None, 500).last_attempt();
        assert_eq!(
            (timeout.reason, timeout.retryable),
            (FailureReason::Timeout, false)
        );
        let other = JobFailure::render(&nav("net::ERR_UNHEARD_OF"), &[]).last_attempt();
        assert_eq!(other.reason, FailureReason::AttemptsExhausted);
        assert!(
            other
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("ERR_UNHEARD_OF"),
            "{other:?}"
        );
        let crashed = JobFailure::browser_died().last_attempt();
        assert_eq!(crashed.reason, FailureReason::BrowserCrashed);
        let gone = JobFailure::render(&RenderError::BrowserGone("Page.navigate"), &[]);
        assert!(gone.retryable);
        let gone = gone.last_attempt();
        assert_eq!(gone.reason, FailureReason::BrowserCrashed, "{gone:?}");
        assert!(gone.detail.unwrap_or_default().contains("Page.navigate"));
    }
}
