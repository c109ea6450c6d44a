//! The SSRF guard: webhook URLs must be `http(s)` and resolve only to public addresses.
//!
//! Checked twice: when an endpoint or a job webhook is registered, and at connect time,
//! through the HTTP client's DNS resolver ([`GuardedResolver`]), so a name that resolves to
//! a public address at registration and to `127.0.0.1` later (DNS rebinding) is still
//! refused. A URL whose host is an IP literal is checked directly (no DNS is involved).
//! Operators may allow internal addresses explicitly (`webhooks.allow_private`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

use crate::HookError;

/// Longest accepted webhook URL.
pub const MAX_URL: usize = 2048;

/// An allowlist entry: network and prefix length.
#[derive(Debug, Clone, Copy)]
struct Net {
    ip: IpAddr,
    prefix: u8,
}

/// Which internal addresses are allowed anyway.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<Net>,
}

impl Policy {
    /// Entries are `IP` or `IP/prefix` (validated by the config).
    pub fn new(allow: &[String]) -> Policy {
        let allow = allow
            .iter()
            .filter_map(|a| {
                let (ip, prefix) = match a.split_once('/') {
                    Some((ip, p)) => (ip, p.parse().ok()?),
                    None => (a.as_str(), 255),
                };
                let ip: IpAddr = ip.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                Some(Net {
                    ip,
                    prefix: prefix.min(max),
                })
            })
            .collect();
        Policy { allow }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| in_net(ip, n.ip, n.prefix))
    }

    /// Whether `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed(ip)
    }

    /// Parses and checks a URL, resolving its host: every address must be permitted.
    pub async fn check_url(&self, raw: &str) -> Result<Url, HookError> {
        let url = parse(raw)?;
        let host = url
            .host_str()
            .ok_or(HookError::BadUrl("the URL has no host"))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port)),
        )
        .await
        .map_err(|_| HookError::BadUrl("the URL's host did not resolve in time"))?
        .map_err(|_| HookError::BadUrl("the URL's host does not resolve"))?;
        let addrs: Vec<SocketAddr> = lookup.collect();
        if addrs.is_empty() {
            return Err(HookError::BadUrl("the URL's host does not resolve"));
        }
        if addrs.iter().any(|a| !self.permits(a.ip())) {
            return Err(HookError::Forbidden);
        }
        Ok(url)
    }
}

/// Syntax only: `http`/`https`, no credentials, bounded length.
pub fn parse(raw: &str) -> Result<Url, HookError> {
    if raw.len() > MAX_URL {
        return Err(HookError::BadUrl("the URL is too long"));
    }
    let url = Url::parse(raw).map_err(|_| HookError::BadUrl("not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HookError::BadUrl("the URL must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HookError::BadUrl("the URL must not carry credentials"));
    }
    if url.host_str().is_none() {
        return Err(HookError::BadUrl("the URL has no host"));
    }
    Ok(url)
}

/// The literal IP of a URL's host, if it is one.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Public unicast: not loopback, private, link-local (incl. cloud metadata 169.254.169.254
/// and fd00:ec2::254), CGNAT, documentation, multicast, broadcast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || (seg0 & 0xffc0) == 0xfe80 // link-local
                || (seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (seg0 == 0x0064 && v6.segments()[1] == 0xff9b)) // NAT64 of anything
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
        || o[0] >= 240)
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            (u32::from(a) & mask) == (u32::from(b) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            (u128::from(a) & mask) == (u128::from(b) & mask)
        }
        _ => false,
    }
}

/// The HTTP client's resolver: resolves with the system resolver and drops every address the
/// policy does not permit, so a connection can only go to a permitted address.
pub struct GuardedResolver {
    pub policy: Arc<Policy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = addrs.filter(|a| policy.permits(a.ip())).collect();
            if permitted.is_empty() {
                return Err(
                    Box::new(HookError::Forbidden) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn internal_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
        ] {
            assert!(!is_public(ip(bad)), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip(good)), "{good}");
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_what_it_names() {
        let p = Policy::new(&["127.0.0.1".into(), "10.0.0.0/8".into()]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("10.9.9.9")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("169.254.169.254")));
    }

    #[test]
    fn url_syntax() {
        assert!(parse("https://example.com/hook").is_ok());
        assert!(parse("ftp://example.com").is_err());
        assert!(parse("http://user:pw@example.com").is_err());
        assert!(parse("not a url").is_err());
    }

    #[tokio::test]
    async fn resolved_names_are_checked() {
        let strict = Policy::new(&[]);
        assert!(matches!(
            strict.check_url("http://localhost:9/x").await,
            Err(HookError::Forbidden)
        ));
        assert!(matches!(
            strict.check_url("http://169.254.169.254/latest").await,
            Err(HookError::Forbidden)
        ));
        assert!(matches!(
            strict.check_url("http://[::1]:9/").await,
            Err(HookError::Forbidden)
        ));
        let open = Policy::new(&["127.0.0.1".into(), "::1".into()]);
        assert!(open.check_url("http://127.0.0.1:9/x").await.is_ok());
    }
}
