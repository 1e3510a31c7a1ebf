//! The outbound URL policy: which URLs a job may load and which addresses
//! may be connected to.
//!
//! Only `http` and `https` (and `ws`/`wss` for the egress guard), compared
//! after parsing, so `HTTP://` is http and every other scheme is refused.
//! An address is allowed only if it is globally routable: loopback,
//! private, shared (CGNAT), link-local, unique-local, multicast, broadcast,
//! documentation, benchmarking and reserved ranges are refused, and so are
//! IPv6 forms that embed a refused IPv4 address (mapped, compatible, 6to4,
//! Teredo, NAT64). Operators add allow and deny rules (CIDRs or host names,
//! `*.example.com` for a domain and its subdomains); a deny rule always
//! wins, an allow rule admits what the built-in rules refuse (tests and
//! development use it for loopback pages).
//!
//! Checking a URL's text is not enough: a name can resolve to anything, and
//! again to something else a second later. [`UrlPolicy::resolve`] resolves
//! once and returns the checked addresses, and the caller must connect to
//! exactly those (the worker's egress proxy does).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// Why a URL or an address is refused. The message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("not a valid URL: {0}")]
    Malformed(String),
    #[error("scheme `{0}` is not allowed; use http or https")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("port {0} is not allowed")]
    Port(u16),
    #[error("{host} is refused: {rule}")]
    Host { host: String, rule: String },
    #[error("{host} resolves to {ip}, which is refused: {rule}")]
    Address {
        host: String,
        ip: IpAddr,
        rule: String,
    },
    /// The name does not exist (NXDOMAIN) or has no addresses: a fact
    /// about the name, not a refusal.
    #[error("{host} does not exist")]
    NameNotFound { host: String },
    /// The resolver did not answer or failed: it may answer later.
    #[error("{host} could not be resolved: {reason}")]
    Unresolvable { host: String, reason: String },
}

impl PolicyError {
    /// Whether trying again later could change the answer (the resolver
    /// failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unresolvable { .. })
    }

    /// Whether the policy refused the target, rather than DNS having no
    /// answer for it.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::NameNotFound { .. } | Self::Unresolvable { .. })
    }

    /// The refused host or address, for a refusal.
    pub fn refused(&self) -> Option<String> {
        match self {
            Self::Host { host, .. } => Some(host.clone()),
            Self::Address { ip, .. } => Some(ip.to_string()),
            Self::Port(port) => Some(format!("port {port}")),
            Self::Scheme(scheme) => Some(format!("{scheme}:")),
            Self::Malformed(_) | Self::NoHost => None,
            Self::NameNotFound { .. } | Self::Unresolvable { .. } => None,
        }
    }
}

/// One operator rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Net(IpNet),
    /// An exact host name, lower case, without a trailing dot.
    Host(String),
    /// `*.example.com`: the domain and every subdomain.
    Domain(String),
}

impl Rule {
    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("empty rule".into());
        }
        if let Ok(net) = raw.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let name = normalise_name(raw.strip_prefix("*.").unwrap_or(raw));
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid {
            return Err(format!(
                "`{raw}` is neither a CIDR, an address nor a host name"
            ));
        }
        Ok(if raw.starts_with("*.") {
            Self::Domain(name)
        } else {
            Self::Host(name)
        })
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Self::Net(net) => net.contains(&canonical(ip)),
            _ => false,
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Self::Host(name) => host == name,
            Self::Domain(domain) => {
                host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
            Self::Net(_) => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(net) => write!(f, "{net}"),
            Self::Host(name) => f.write_str(name),
            Self::Domain(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// The policy. [`UrlPolicy::default`] is the strict built-in one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// When set, only these ports.
    ports: Option<Vec<u16>>,
    /// Names answered from this table instead of the system resolver.
    hosts: Vec<(String, Vec<IpAddr>)>,
}

/// A host and port that passed the checks that need no DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as the URL has it (lower case; IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// An operator allow rule names this host: its addresses are not
    /// checked against the built-in ranges.
    pub host_allowed: bool,
}

impl UrlPolicy {
    /// A policy with operator rules: comma- or space-separated lists of
    /// CIDRs, addresses and host names, and of allowed ports (empty: any).
    pub fn new(allow: &str, deny: &str, ports: &str) -> Result<Self, String> {
        let rules = |list: &str| -> Result<Vec<Rule>, String> {
            split_list(list).map(Rule::parse).collect()
        };
        let ports: Vec<u16> = split_list(ports)
            .map(|p| p.parse::<u16>().map_err(|_| format!("`{p}` is not a port")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allow: rules(allow).map_err(|e| format!("allow list: {e}"))?,
            deny: rules(deny).map_err(|e| format!("deny list: {e}"))?,
            ports: (!ports.is_empty()).then_some(ports),
            hosts: Vec::new(),
        })
    }

    /// Answer these names from a fixed table, as `/etc/hosts` would, before
    /// asking the system resolver. Their addresses are checked like any
    /// other answer; this is how a name with several addresses, some
    /// refused, is produced where no resolver can be configured.
    pub fn with_hosts<'a>(
        mut self,
        hosts: impl IntoIterator<Item = (&'a str, Vec<IpAddr>)>,
    ) -> Self {
        self.hosts = hosts
            .into_iter()
            .map(|(name, addrs)| (normalise_name(name), addrs))
            .collect();
        self
    }

    /// Check everything about `raw` that needs no DNS: scheme, port, host
    /// rules, and the address when the host is an IP literal.
    pub fn check_url(&self, raw: &str) -> Result<(Url, Target), PolicyError> {
        let url = Url::parse(raw).map_err(|e| PolicyError::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PolicyError::Scheme(url.scheme().to_owned()));
        }
        let port = url.port_or_known_default().ok_or(PolicyError::NoHost)?;
        let target = self.check_host(url.host(), port)?;
        Ok((url, target))
    }

    fn check_host(&self, host: Option<Host<&str>>, port: u16) -> Result<Target, PolicyError> {
        match host {
            None => Err(PolicyError::NoHost),
            Some(Host::Ipv4(ip)) => self.check_ip_target(IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => self.check_ip_target(IpAddr::V6(ip), port),
            Some(Host::Domain(name)) => self.check_name(name, port),
        }
    }

    /// Check a host and port as a proxy sees them (`CONNECT host:port`, or
    /// the authority of an absolute-form request).
    pub fn check_authority(&self, host: &str, port: u16) -> Result<Target, PolicyError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip_target(ip, port);
        }
        // Let the URL parser normalise the name exactly as a browser would
        // (IDNA, decimal and octal IPv4 forms, trailing dots).
        let url = Url::parse(&format!("http://{host}/"))
            .map_err(|e| PolicyError::Malformed(e.to_string()))?;
        self.check_host(url.host(), port)
    }

    fn check_port(&self, port: u16) -> Result<(), PolicyError> {
        match &self.ports {
            Some(ports) if !ports.contains(&port) => Err(PolicyError::Port(port)),
            _ => Ok(()),
        }
    }

    fn check_ip_target(&self, ip: IpAddr, port: u16) -> Result<Target, PolicyError> {
        self.check_port(port)?;
        let host = ip.to_string();
        self.check_ip(&host, ip)?;
        Ok(Target {
            host,
            port,
            host_allowed: false,
        })
    }

    fn check_name(&self, name: &str, port: u16) -> Result<Target, PolicyError> {
        self.check_port(port)?;
        let host = normalise_name(name);
        if let Some(rule) = self.deny.iter().find(|r| r.matches_host(&host)) {
            return Err(PolicyError::Host {
                host,
                rule: format!("denied by the operator rule {rule}"),
            });
        }
        let host_allowed = self.allow.iter().any(|r| r.matches_host(&host));
        if !host_allowed && (host == "localhost" || host.ends_with(".localhost")) {
            return Err(PolicyError::Host {
                host,
                rule: "localhost names are loopback".into(),
            });
        }
        Ok(Target {
            host,
            port,
            host_allowed,
        })
    }

    /// Check one address: operator deny rules, then allow rules, then the
    /// built-in ranges. `host` is only for the message.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), PolicyError> {
        let refuse = |rule: String| PolicyError::Address {
            host: host.to_owned(),
            ip,
            rule,
        };
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(refuse(format!("denied by the operator rule {rule}")));
        }
        if self.allow.iter().any(|r| r.matches_ip(ip)) {
            return Ok(());
        }
        match refused_range(ip) {
            Some(rule) => Err(refuse(rule)),
            None => Ok(()),
        }
    }

    /// Resolve `target` and check every address. Returns the addresses to
    /// connect to; connecting anywhere else defeats the check. A name with
    /// any refused address is refused whole.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, PolicyError> {
        let bare = target.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            // Literals were checked by check_url / check_authority.
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let fixed = self
            .hosts
            .iter()
            .find(|(name, _)| *name == normalise_name(&target.host));
        let addrs = match fixed {
            Some((_, ips)) => ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, target.port))
                .collect(),
            None => lookup(&target.host, target.port).await?,
        };
        if !target.host_allowed {
            for addr in &addrs {
                self.check_ip(&target.host, addr.ip())?;
            }
        }
        Ok(addrs)
    }

    /// [`check_url`](Self::check_url) and then [`resolve`](Self::resolve).
    pub async fn check_and_resolve(&self, raw: &str) -> Result<Vec<SocketAddr>, PolicyError> {
        let (_, target) = self.check_url(raw)?;
        self.resolve(&target).await
    }
}

/// The system resolver's answer for `host` (`/etc/hosts`, then DNS, as
/// `getaddrinfo` does), with its error kind kept: a name that does not
/// exist is told apart from a resolver that did not answer.
async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
    let name = host.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let hints = dns_lookup::AddrInfoHints {
            socktype: dns_lookup::SockType::Stream.into(),
            ..dns_lookup::AddrInfoHints::default()
        };
        dns_lookup::getaddrinfo(Some(&name), None, Some(hints)).map(|infos| {
            let mut addrs: Vec<SocketAddr> = infos
                .filter_map(Result::ok)
                .map(|info| SocketAddr::new(info.sockaddr.ip(), port))
                .collect();
            addrs.dedup();
            addrs
        })
    })
    .await
    .map_err(|e| PolicyError::Unresolvable {
        host: host.to_owned(),
        reason: e.to_string(),
    })?;
    match answer {
        Ok(addrs) if addrs.is_empty() => Err(PolicyError::NameNotFound {
            host: host.to_owned(),
        }),
        Ok(addrs) => Ok(addrs),
        Err(e) => match e.kind() {
            dns_lookup::LookupErrorKind::NoName | dns_lookup::LookupErrorKind::NoData => {
                Err(PolicyError::NameNotFound {
                    host: host.to_owned(),
                })
            }
            _ => Err(PolicyError::Unresolvable {
                host: host.to_owned(),
                reason: std::io::Error::from(e).to_string(),
            }),
        },
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ', '\n', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 ranges that are not globally reachable (IANA special-purpose
/// registry), with the rule's name.
const REFUSED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" 0.0.0.0/8"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private 10.0.0.0/8"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback 127.0.0.0/8"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local 169.254.0.0/16 (cloud metadata)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private 172.16.0.0/12"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments 192.0.0.0/24",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation 192.0.2.0/24",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast 192.88.99.0/24",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private 192.168.0.0/16"),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking 198.18.0.0/15",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation 198.51.100.0/24",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation 203.0.113.0/24",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast 224.0.0.0/4"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved 240.0.0.0/4 (and broadcast)",
    ),
];

/// IPv6 ranges refused outright (embedded-IPv4 forms are checked apart).
const REFUSED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 64:ff9b:1::/48",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only 100::/64",
    ),
    (
        Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking 2001:2::/48",
    ),
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHID 2001:10::/28",
    ),
    (
        Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHIDv2 2001:20::/28",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation 2001:db8::/32",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation 3fff::/20",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing 5f00::/16",
    ),
];

/// The name of the built-in rule that refuses `ip`, if any.
pub fn refused_range(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(ip) => refused_v4(ip),
        IpAddr::V6(ip) => refused_v6(ip),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<String> {
    REFUSED_V4.iter().find_map(|(net, len, name)| {
        Ipv4Net::new(*net, *len)
            .ok()
            .filter(|n| n.contains(&ip))
            .map(|_| (*name).to_owned())
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<String> {
    let segments = ip.segments();
    let embedded = |v4: Ipv4Addr, form: &str| {
        refused_v4(v4).map(|rule| format!("{form} form of {v4}, {rule}"))
    };
    if ip.is_unspecified() {
        return Some("unspecified ::".into());
    }
    if ip.is_loopback() {
        return Some("loopback ::1".into());
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return embedded(v4, "IPv4-mapped");
    }
    let [a, b, c, d] = ip.octets()[12..16] else {
        unreachable!("an IPv6 address has 16 octets")
    };
    let low_v4 = Ipv4Addr::new(a, b, c, d);
    // ::/96, IPv4-compatible (deprecated): refuse the whole block unless it
    // embeds a public address.
    if segments[..6].iter().all(|s| *s == 0) {
        return embedded(low_v4, "IPv4-compatible")
            .or_else(|| Some("IPv4-compatible ::/96 (deprecated)".into()));
    }
    // 64:ff9b::/96, the well-known NAT64 prefix.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded(low_v4, "NAT64");
    }
    // 2002::/16, 6to4: the IPv4 address is in bits 16..48.
    if segments[0] == 0x2002 {
        let [_, _, a, b, c, d, ..] = ip.octets();
        return embedded(Ipv4Addr::new(a, b, c, d), "6to4");
    }
    // 2001::/32, Teredo: server in bits 32..64, client (inverted) in the last 32.
    if segments[0] == 0x2001 && segments[1] == 0 {
        let [_, _, _, _, a, b, c, d, ..] = ip.octets();
        let server = Ipv4Addr::new(a, b, c, d);
        let client = Ipv4Addr::from(!u32::from(low_v4));
        return embedded(client, "Teredo client").or_else(|| embedded(server, "Teredo server"));
    }
    if let Some((_, _, name)) = REFUSED_V6
        .iter()
        .find(|(net, len, _)| Ipv6Net::new(*net, *len).is_ok_and(|n| n.contains(&ip)))
    {
        return Some((*name).to_owned());
    }
    // Everything outside global unicast 2000::/3 is not globally reachable:
    // unique-local fc00::/7, link-local fe80::/10, site-local fec0::/10,
    // multicast ff00::/8 and the reserved rest.
    if segments[0] & 0xe000 != 0x2000 {
        let name = match segments[0] {
            s if s & 0xfe00 == 0xfc00 => "unique-local fc00::/7",
            s if s & 0xffc0 == 0xfe80 => "link-local fe80::/10",
            s if s & 0xffc0 == 0xfec0 => "site-local fec0::/10",
            s if s & 0xff00 == 0xff00 => "multicast ff00::/8",
            _ => "outside global unicast 2000::/3",
        };
        return Some(name.into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy::default()
    }

    const HOSTILE: &[&str] = &[
        // Loopback in every spelling.
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/admin",
        "http://127.1/",
        "http://127.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.0x0.0x0.0x1/",
        "http://0177.0.0.1/",
        "http://017700000001/",
        "http://127.000.000.001/",
        "http://127.255.255.254/",
        "HTTP://127.0.0.1/",
        "hTtPs://127.0.0.1/",
        "http://[::1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://user:pass@127.0.0.1/",
        "http://example.com@127.0.0.1/",
        "http://localhost/",
        "http://LOCALHOST/",
        "http://localhost./",
        "http://api.localhost/",
        // Unspecified.
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        // Cloud metadata and link-local.
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://0251.0376.0251.0376/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1]/",
        "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
        // Private, shared, and other special ranges.
        "http://10.0.0.1/",
        "http://10.255.255.255/",
        "http://172.16.0.1/",
        "http://172.31.255.255/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://100.127.255.255/",
        "http://192.0.0.170/",
        "http://192.0.2.1/",
        "http://198.18.0.1/",
        "http://198.19.255.255/",
        "http://198.51.100.7/",
        "http://203.0.113.9/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://[fc00::1]/",
        "http://[fd12:3456:789a::1]/",
        "http://[fec0::1]/",
        "http://[ff02::1]/",
        "http://[2001:db8::1]/",
        "http://[64:ff9b:1::a00:1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[2002:c0a8:101::1]/",
        "http://[100::1]/",
        // Schemes other than http(s).
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "data:text/html,<script>alert(1)</script>",
        "javascript:alert(document.domain)",
        "chrome://settings",
        "chrome-extension://abc/page.html",
        "view-source:http://example.com/",
        "blob:http://example.com/1234",
        "ftp://example.com/file",
        "gopher://127.0.0.1:6379/_INFO",
        "ws://example.com/",
        "about:blank",
        // Not URLs at all.
        "http://[fe80::1%25eth0]/",
        "http://",
        "//example.com/",
    ];

    #[test]
    fn hostile_urls_are_refused() {
        assert!(HOSTILE.len() >= 40);
        let policy = strict();
        for url in HOSTILE {
            assert!(policy.check_url(url).is_err(), "{url} was allowed");
        }
    }

    #[test]
    fn ordinary_public_urls_are_allowed() {
        let policy = strict();
        for url in [
            "http://example.com/",
            "https://example.com/path?q=1#frag",
            "HTTPS://EXAMPLE.COM/",
            "https://www.wikipedia.org/",
            "http://93.184.215.14/",
            "https://1.1.1.1/",
            "https://8.8.8.8:8443/x",
            "http://[2606:4700:4700::1111]/",
            "http://[2a00:1450:4001:80b::200e]/",
            "https://xn--bcher-kva.example/",
            "https://bücher.example/",
            "http://user@example.com/",
            "http://172.32.0.1/",
            "http://192.169.0.1/",
            "http://100.128.0.1/",
            "http://[::ffff:8.8.8.8]/",
            "http://[2002:808:808::1]/",
            "http://[64:ff9b::808:808]/",
        ] {
            policy
                .check_url(url)
                .unwrap_or_else(|e| panic!("{url} was refused: {e}"));
        }
    }

    #[test]
    fn messages_name_the_rule() {
        let policy = strict();
        let e = policy.check_url("http://169.254.169.254/").unwrap_err();
        assert!(e.to_string().contains("link-local"), "{e}");
        let e = policy.check_url("http://[::ffff:10.1.2.3]/").unwrap_err();
        assert!(
            e.to_string().contains("IPv4-mapped form of 10.1.2.3"),
            "{e}"
        );
        let e = policy.check_url("file:///etc/passwd").unwrap_err();
        assert_eq!(e, PolicyError::Scheme("file".into()));
    }

    #[test]
    fn operator_rules() {
        let policy = UrlPolicy::new(
            "127.0.0.1/32, internal.corp",
            "*.evil.example 8.8.4.0/24",
            "",
        )
        .unwrap();
        assert!(policy.check_url("http://127.0.0.1:9000/").is_ok());
        assert!(
            policy.check_url("http://127.0.0.2/").is_err(),
            "only the /32"
        );
        assert!(
            policy.check_url("http://[::ffff:127.0.0.1]/").is_ok(),
            "mapped form of an allowed address"
        );
        let (_, target) = policy.check_url("http://internal.corp/").unwrap();
        assert!(target.host_allowed);
        assert!(policy.check_url("http://evil.example/").is_err());
        assert!(policy.check_url("http://a.b.evil.example./").is_err());
        assert!(policy.check_url("http://notevil.example/").is_ok());
        assert!(policy.check_url("http://8.8.4.4/").is_err());
        assert!(policy.check_url("http://8.8.8.8/").is_ok());

        let deny_wins = UrlPolicy::new("10.0.0.0/8", "10.1.0.0/16", "").unwrap();
        assert!(deny_wins.check_url("http://10.2.0.1/").is_ok());
        assert!(deny_wins.check_url("http://10.1.0.1/").is_err());

        let ports = UrlPolicy::new("", "", "80,443").unwrap();
        assert!(ports.check_url("http://example.com/").is_ok());
        assert!(ports.check_url("https://example.com/").is_ok());
        assert_eq!(
            ports.check_url("http://example.com:8080/").unwrap_err(),
            PolicyError::Port(8080)
        );

        for bad in ["10.0.0.0/33", "not a host!", "::1/200"] {
            assert!(UrlPolicy::new(bad, "", "").is_err(), "{bad}");
        }
        assert!(UrlPolicy::new("", "", "http").is_err());
    }

    #[test]
    fn authorities_as_a_proxy_sees_them() {
        let policy = strict();
        for (host, port) in [
            ("127.0.0.1", 443),
            ("[::1]", 443),
            ("::1", 80),
            ("2130706433", 80),
            ("0x7f.1", 80),
            ("localhost", 80),
            ("169.254.169.254", 80),
            ("[::ffff:169.254.169.254]", 443),
        ] {
            assert!(policy.check_authority(host, port).is_err(), "{host}:{port}");
        }
        let target = policy.check_authority("Example.COM.", 443).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("example.com", 443));
        assert!(
            policy
                .check_authority("[2606:4700:4700::1111]", 443)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn names_that_resolve_to_refused_addresses_are_refused() {
        // `localhost` resolves locally, without a network.
        let allow_name = UrlPolicy::new("", "", "").unwrap();
        let target = Target {
            host: "localhost".into(),
            port: 80,
            host_allowed: false,
        };
        let e = allow_name.resolve(&target).await.unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Address { .. } | PolicyError::NameNotFound { .. }
            ),
            "{e}"
        );
        // Allowed by address, the same name passes and is pinned to it.
        let loopback = UrlPolicy::new("127.0.0.0/8, ::1", "", "").unwrap();
        let addrs = loopback.resolve(&target).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn a_name_with_an_allowed_and_a_refused_address_is_refused_whole() {
        let allowed = IpAddr::from([127, 0, 0, 1]);
        let refused = IpAddr::from([169, 254, 169, 254]);
        let policy = UrlPolicy::new("127.0.0.1/32", "", "").unwrap().with_hosts([
            ("mixed.test", vec![allowed, refused]),
            ("Single.Test.", vec![allowed]),
        ]);
        let target = |host: &str| Target {
            host: host.into(),
            port: 80,
            host_allowed: false,
        };
        let e = policy.resolve(&target("mixed.test")).await.unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert_eq!(e.refused(), Some(refused.to_string()));
        let addrs = policy.resolve(&target("single.test")).await.unwrap();
        assert_eq!(addrs, [SocketAddr::new(allowed, 80)]);
    }
}
