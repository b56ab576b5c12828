//! The outbound address guard: deliveries never reach loopback, private, link-local, CGNAT,
//! multicast, unspecified or cloud-metadata addresses, unless an operator allows a network
//! (`--allow-target CIDR`).
//!
//! The check runs on the resolved addresses when a connection is made (the clients' resolver
//! drops refused addresses), so a name that resolves to a public address when the endpoint
//! is saved and to a private one later (DNS rebinding) is still refused. IP-literal URLs are
//! checked before the request and when an endpoint is saved.
//!
//! ```
//! use tradehook::deliver::guard::refused;
//! assert!(refused("127.0.0.1".parse().unwrap()));
//! assert!(refused("::ffff:169.254.169.254".parse().unwrap()));
//! assert!(!refused("1.1.1.1".parse().unwrap()));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Whether an address is one deliveries must not reach.
pub fn refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()            // 127.0.0.0/8
        || ip.is_private()      // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()   // 169.254/16, cloud metadata 169.254.169.254 included
        || ip.is_multicast()    // 224/4
        || ip.is_broadcast()
        || ip.is_unspecified()
        || a == 0               // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 192 && b == 0 && ip.octets()[2] == 2) // documentation 192.0.2/24
        || (a == 198 && b == 51 && ip.octets()[2] == 100) // documentation 198.51.100/24
        || (a == 203 && b == 0 && ip.octets()[2] == 113) // documentation 203.0.113/24
        || a >= 240 // reserved
}

fn refused_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address inside.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return refused_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    // IPv4-translated (SIIT) ::ffff:0:a.b.c.d carries one too.
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        let [.., hi, lo] = segments;
        return refused_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    if segments[0] == 0x2002 {
        return refused_v4(Ipv4Addr::from(
            ((segments[1] as u32) << 16) | segments[2] as u32,
        ));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
        || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || segments[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
        || segments[..2] == [0x2001, 0] // Teredo 2001::/32: an IPv4 tunnel to anywhere
        || segments[..2] == [0x2001, 0xdb8] // documentation 2001:db8::/32
        || segments[..4] == [0x100, 0, 0, 0] // discard-only 100::/64
        // IPv4-compatible ::a.b.c.d (deprecated)
        || (segments[..6] == [0, 0, 0, 0, 0, 0] && refused_v4(ip.to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED)))
}

/// The guard with the operator's allowed networks.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Arc<Vec<IpNet>>,
}

/// A delivery was refused because of where it would go.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether deliveries may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !refused(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL whose host is an IP literal; a name is checked when it is resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Blocked(format!(
                "{ip} is a private, loopback, link-local or otherwise internal address; \
                 deliveries may not go there (an operator can allow a network with --allow-target)"
            )))
        }
    }
}

impl Guard {
    /// The addresses `host` resolves to that deliveries may reach; none is an error that says
    /// what it resolved to.
    pub async fn resolve(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        let permitted: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|a| self.permits(a.ip()))
            .collect();
        if permitted.is_empty() {
            let ips: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
            return Err(Box::new(Blocked(format!(
                "{host} resolves to {} only: internal addresses deliveries may not reach \
                 (an operator can allow a network with --allow-target)",
                if ips.is_empty() {
                    "nothing".to_owned()
                } else {
                    ips.join(", ")
                }
            ))));
        }
        Ok(permitted)
    }
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let permitted = Guard::resolve(&guard, name.as_str()).await?;
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guard as the resolver of hyper's connector, for plain-http deliveries.
impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Guard {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let guard = self.clone();
        Box::pin(async move { Ok(guard.resolve(name.as_str()).await?.into_iter()) })
    }
}

/// Whether an error (or one of its causes) is a [`Blocked`].
pub fn is_blocked(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.downcast_ref::<Blocked>().is_some() {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "::127.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.2.1",
            "203.0.113.9",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
        ] {
            assert!(refused(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "52.89.214.238",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "198.20.0.1",
            "2001:4860:4860::8888",
        ] {
            assert!(!refused(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn an_allowed_network_lets_deliveries_through() {
        let guard = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(guard.permits("127.0.0.1".parse().unwrap()));
        assert!(guard.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!guard.permits("10.0.0.1".parse().unwrap()));
        let url = reqwest::Url::parse("http://[::ffff:10.0.0.1]:8080/x").unwrap();
        assert!(guard.check_url(&url).is_err());
        let url = reqwest::Url::parse("http://example.com/x").unwrap();
        assert!(guard.check_url(&url).is_ok());
    }
}
