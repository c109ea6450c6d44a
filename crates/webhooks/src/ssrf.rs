//! The SSRF guard: webhook URLs must be `http(s)` and resolve only to public addresses.
//!
//! Checked twice: when an endpoint or a job webhook is registered, and at connect time,
//! through the HTTP client's DNS resolver ([`GuardedResolver`]), so a name that resolves to
//! a public address at registration and to `127.0.0.1` later (DNS rebinding) is still
//! refused. A URL whose host is an IP literal is checked directly (no DNS is involved).
//! Operators may allow internal addresses explicitly (`webhooks.allow_private`).
//!
//! The client never uses a proxy ([`client_builder`]): through `HTTP(S)_PROXY` the
//! connection would go to the proxy, the resolver would never see the target's address,
//! and the proxy would reach whatever internal address the name points to.

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

/// The webhook HTTP client's builder: the guarded resolver, no redirects, no proxy (not
/// even one named by `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY`).
pub fn client_builder(policy: Arc<Policy>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { policy }))
}

/// Public unicast: not loopback, private, link-local (incl. cloud metadata 169.254.169.254
/// and fd00:ec2::254), CGNAT, documentation, multicast, broadcast or unspecified; and no
/// IPv6 form that embeds or translates to such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let seg = v6.segments();
            // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits.
            if seg[0] == 0x2002 {
                let [a, b] = seg[1].to_be_bytes();
                let [c, d] = seg[2].to_be_bytes();
                return public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || seg[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated)
                || (seg[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x2001 && seg[1] == 0) // Teredo: an obfuscated IPv4 inside
                || (seg[0] == 0x0064 && seg[1] == 0xff9b)) // NAT64 (well-known and local)
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
            "fec0::1",
            "feff::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:0101::",
            "2001:0:4136:e378::1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(!is_public(ip(bad)), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2002:808:808::1",
        ] {
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

    /// Set by [`a_proxy_in_the_environment_is_not_used`] for its child process.
    const PROXY_CHILD: &str = "SLUICE_TEST_PROXY_CHILD";

    /// With `HTTP_PROXY` and `ALL_PROXY` pointing at a listener, a delivery still connects
    /// to its target (whose address the resolver checked), never to the proxy. The
    /// environment can only be set for a child process, so the test runs itself again.
    #[tokio::test]
    async fn a_proxy_in_the_environment_is_not_used() {
        if std::env::var_os(PROXY_CHILD).is_some() {
            return proxied_delivery().await;
        }
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        proxy.set_nonblocking(true).unwrap();
        let url = format!("http://{}", proxy.local_addr().unwrap());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ssrf::tests::a_proxy_in_the_environment_is_not_used",
            ])
            .env(PROXY_CHILD, "1")
            .env("HTTP_PROXY", &url)
            .env("http_proxy", &url)
            .env("ALL_PROXY", &url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(proxy.accept().is_err(), "the proxy was contacted");
    }

    /// The child: one request through the webhook client to a local target.
    async fn proxied_delivery() {
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        let serve = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut tcp, _) = target.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            tcp.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let policy = Arc::new(Policy::new(&["127.0.0.1".into()]));
        let client = client_builder(policy)
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        // A name, so the guarded resolver is on the path as in a real delivery.
        let r = client
            .post(format!("http://localhost:{}/hook", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        serve.await.unwrap();
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
