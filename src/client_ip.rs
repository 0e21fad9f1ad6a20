//! Who the client is, network-wise. The socket's peer address, unless the request came through
//! one of `server.trusted_proxies`: then the rightmost `X-Forwarded-For` hop that is not itself a
//! trusted proxy. A client can write anything into that header, so the header is never believed
//! by default, and only the hops our own proxies appended are skipped.
//!
//! Per-IP limits, rate-limiter keys and the `ip` of log rows count an [`IpBucket`], never the
//! raw address: an IPv6 host is usually given a whole /64 (or more), and counting every /128
//! apart would hand it billions of fresh budgets. This module is the only place that decides
//! which addresses count as one.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

/// What per-IP limits count as one client: an IPv4 address, or the IPv6 network of
/// `connections.ipv6_prefix` bits holding the address. Shown as the address when the bucket is a
/// single address (`192.0.2.7`, or any IPv6 address with a prefix of 128), else as the network
/// (`2001:db8:1:2::/64`): that text is what Redis keys and log rows carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpBucket {
    network: IpAddr,
    prefix: u8,
}

impl IpBucket {
    /// The bucket of `ip` when IPv6 clients count by their first `ipv6_prefix` bits (1..=128).
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self {
                network: ip,
                prefix: 32,
            },
            // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`: each is its own IPv4
            // client, not one member of `::ffff:0:0/64`.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::new(IpAddr::V4(v4), ipv6_prefix),
                None => {
                    let prefix = ipv6_prefix.clamp(1, 128);
                    let mask = u128::MAX << (128 - u32::from(prefix));
                    Self {
                        network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                        prefix,
                    }
                }
            },
        }
    }
}

impl fmt::Display for IpBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            IpAddr::V6(_) if self.prefix < 128 => write!(f, "{}/{}", self.network, self.prefix),
            _ => self.network.fmt(f),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<Vec<IpNet>>,
    /// `connections.ipv6_prefix`.
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new(&[], crate::config::Connections::default().ipv6_prefix)
    }
}

impl ClientIp {
    /// `trusted` holds addresses (`10.0.0.5`) or networks (`10.0.0.0/8`), already validated by the
    /// config checks; anything unparsable is ignored. IPv6 clients count by their first
    /// `ipv6_prefix` bits.
    pub fn new(trusted: &[String], ipv6_prefix: u8) -> Self {
        let networks = trusted
            .iter()
            .filter_map(|t| {
                t.parse::<IpNet>()
                    .ok()
                    .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Self {
            trusted: Arc::new(networks),
            ipv6_prefix,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The bucket of the client behind `peer`: what limits count and log rows record.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpBucket {
        IpBucket::new(self.address(peer, headers), self.ipv6_prefix)
    }

    fn address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.is_trusted(ip) => client = ip,
                Ok(ip) => return ip,
                // A malformed hop was not written by our proxies: stop believing the header here.
                Err(_) => return client,
            }
        }
        client
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpBucket;

    fn name(&self) -> &'static str {
        "client IP"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<IpBucket, GovernorError> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or(GovernorError::UnableToExtractKey)?;
        Ok(self.resolve(peer, req.headers()))
    }

    fn key_name(&self, key: &IpBucket) -> Option<String> {
        Some(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let resolver = ClientIp::new(&["10.0.0.0/8".into()], 64);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(resolver.address(stranger, &headers("1.2.3.4")), stranger);
        assert_eq!(
            ClientIp::default().address("10.0.0.1".parse().unwrap(), &headers("1.2.3.4")),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_even_if_the_client_forged_hops() {
        let resolver = ClientIp::new(&["10.0.0.0/8".into(), "192.0.2.7".into()], 64);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        // The client wrote "6.6.6.6"; our proxies appended the real client and one another.
        let h = headers("6.6.6.6, 198.51.100.20, 192.0.2.7");
        assert_eq!(
            resolver.address(proxy, &h),
            "198.51.100.20".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolver.address(proxy, &headers("garbage, 10.2.2.2")),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    fn bucket(ip: &str, prefix: u8) -> String {
        IpBucket::new(ip.parse().unwrap(), prefix).to_string()
    }

    #[test]
    fn ipv6_addresses_count_by_their_prefix_and_ipv4_by_the_address() {
        assert_eq!(bucket("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(bucket("2001:db8:1:2:ffff::9", 64), "2001:db8:1:2::/64");
        assert_eq!(bucket("2001:db8:1:3::1", 64), "2001:db8:1:3::/64");
        assert_eq!(bucket("2001:db8:1:2::1", 48), "2001:db8:1::/48");
        assert_eq!(bucket("2001:db8::1", 128), "2001:db8::1");
        assert_eq!(bucket("2001:db8::1", 1), "::/1");
        assert_eq!(bucket("198.51.100.7", 1), "198.51.100.7");
        // IPv4 clients of a dual-stack listener stay apart.
        assert_eq!(bucket("::ffff:198.51.100.7", 64), "198.51.100.7");
    }
}
