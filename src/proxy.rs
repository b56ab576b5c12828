//! Trusted proxies: behind a reverse proxy every request comes from the proxy's address, and
//! the client's is in a header the proxy adds. That header is believed only from the peers
//! the operator names (`--trusted-proxy CIDR`); from anyone else it is the client's own claim
//! and is ignored. Within it, the client is the right-most address that is not a trusted
//! proxy: every address to its left was written by the client and could be anything.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Which header the trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, Caddy, Traefik, HAProxy, most
    /// load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The proxies whose word on the client's address is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub networks: Vec<IpNet>,
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// The address a request came from. `peer` itself, unless it is a trusted proxy: then the
    /// right-most address of the forwarding chain that is not a trusted proxy. If the chain
    /// holds only trusted proxies, its left-most; if it is missing, or an entry cannot be
    /// read before an untrusted address is found (`unknown`, an obfuscated name), the last
    /// trusted address read, since nothing further left can be told apart from a forgery.
    ///
    /// ```
    /// use tradehook::proxy::{ForwardedHeader, TrustedProxies};
    /// let proxies = TrustedProxies {
    ///     networks: vec!["10.0.0.0/8".parse().unwrap()],
    ///     header: ForwardedHeader::XForwardedFor,
    /// };
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-forwarded-for", "6.6.6.6, 52.89.214.238, 10.0.0.7".parse().unwrap());
    /// // From the proxy: the client is the first address it did not add itself.
    /// assert_eq!(proxies.client("10.0.0.2".parse().unwrap(), &headers).to_string(), "52.89.214.238");
    /// // From anyone else the header is the sender's own claim.
    /// assert_eq!(proxies.client("1.2.3.4".parse().unwrap(), &headers).to_string(), "1.2.3.4");
    /// ```
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Several header lines are one list, in order.
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            entries.extend(text.split(','));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let address = match self.header {
                ForwardedHeader::XForwardedFor => address(entry),
                ForwardedHeader::Forwarded => forwarded_for(entry).and_then(address),
            };
            match address {
                Some(ip) if self.trusts(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }
}

/// The `for=` of one element of a `Forwarded` header (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then_some(value)
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, possibly quoted. IPv4 over IPv6 (`::ffff:1.2.3.4`) is the IPv4
/// address it is.
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    let ip = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0.parse().ok()?,
        None => text
            .parse::<IpAddr>()
            .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
            .ok()?,
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies {
            networks: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            header,
        }
    }

    fn client(header: ForwardedHeader, peer: &str, values: &[(&str, &str)]) -> String {
        let mut headers = HeaderMap::new();
        for (name, value) in values {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        proxies(header)
            .client(peer.parse().unwrap(), &headers)
            .to_string()
    }

    #[test]
    fn x_forwarded_for_gives_the_right_most_untrusted_address() {
        let xff = ForwardedHeader::XForwardedFor;
        let from_proxy = |v: &str| client(xff, "10.0.0.1", &[("x-forwarded-for", v)]);
        assert_eq!(from_proxy("52.89.214.238"), "52.89.214.238");
        // A forged left part changes nothing.
        assert_eq!(from_proxy("1.1.1.1, 52.89.214.238"), "52.89.214.238");
        // Two trusted hops are skipped.
        assert_eq!(from_proxy("52.89.214.238, 10.1.1.1"), "52.89.214.238");
        // Ports and brackets, and IPv4 written as IPv6.
        assert_eq!(from_proxy("52.89.214.238:4711"), "52.89.214.238");
        assert_eq!(from_proxy("[2001:db8::7]:443"), "2001:db8::7");
        assert_eq!(from_proxy("::ffff:52.89.214.238"), "52.89.214.238");
        // Only trusted hops: the left-most of them.
        assert_eq!(from_proxy("10.9.9.9, 10.1.1.1"), "10.9.9.9");
        // Unreadable before any untrusted address: the last trusted one.
        assert_eq!(from_proxy("52.89.214.238, garbage, 10.1.1.1"), "10.1.1.1");
        assert_eq!(from_proxy("unknown"), "10.0.0.1");
        // Several header lines are one list.
        assert_eq!(
            client(
                xff,
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "52.89.214.238")
                ]
            ),
            "52.89.214.238"
        );
        // No header: the proxy itself.
        assert_eq!(client(xff, "10.0.0.1", &[]), "10.0.0.1");
        // IPv6 loopback proxy.
        assert_eq!(
            client(xff, "::1", &[("x-forwarded-for", "52.89.214.238")]),
            "52.89.214.238"
        );
    }

    #[test]
    fn the_headers_of_an_untrusted_peer_are_ignored() {
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            assert_eq!(
                client(
                    header,
                    "52.89.214.238",
                    &[
                        ("x-forwarded-for", "10.0.0.1"),
                        ("forwarded", "for=10.0.0.1")
                    ]
                ),
                "52.89.214.238"
            );
        }
    }

    #[test]
    fn forwarded_gives_the_right_most_untrusted_for() {
        let fwd = ForwardedHeader::Forwarded;
        let from_proxy = |v: &str| client(fwd, "10.0.0.1", &[("forwarded", v)]);
        assert_eq!(
            from_proxy("for=1.1.1.1, for=52.89.214.238;proto=https;by=10.0.0.1"),
            "52.89.214.238"
        );
        assert_eq!(
            from_proxy(r#"for="[2001:db8:cafe::17]:4711""#),
            "2001:db8:cafe::17"
        );
        assert_eq!(from_proxy("For=52.89.214.238"), "52.89.214.238");
        assert_eq!(from_proxy("for=_hidden, for=10.1.1.1"), "10.1.1.1");
        assert_eq!(from_proxy("proto=https"), "10.0.0.1");
        // The other header is not read when this one is chosen.
        assert_eq!(
            client(fwd, "10.0.0.1", &[("x-forwarded-for", "52.89.214.238")]),
            "10.0.0.1"
        );
    }
}
