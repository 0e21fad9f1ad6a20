//! Who the client is, network-wise. The socket's peer address, unless the request came through
//! one of `server.trusted_proxies`: then the rightmost `X-Forwarded-For` hop that is not itself a
//! trusted proxy. A client can write anything into that header, so the header is never believed
//! by default, and only the hops our own proxies appended are skipped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

#[derive(Clone, Debug, Default)]
pub struct ClientIp {
    trusted: Arc<Vec<IpNet>>,
}

impl ClientIp {
    /// `trusted` holds addresses (`10.0.0.5`) or networks (`10.0.0.0/8`), already validated by the
    /// config checks; anything unparsable is ignored.
    pub fn new(trusted: &[String]) -> Self {
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
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
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
    type Key = IpAddr;

    fn name(&self) -> &'static str {
        "client IP"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or(GovernorError::UnableToExtractKey)?;
        Ok(self.resolve(peer, req.headers()))
    }

    fn key_name(&self, key: &IpAddr) -> Option<String> {
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
        let resolver = ClientIp::new(&["10.0.0.0/8".into()]);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(resolver.resolve(stranger, &headers("1.2.3.4")), stranger);
        assert_eq!(
            ClientIp::default().resolve("10.0.0.1".parse().unwrap(), &headers("1.2.3.4")),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_even_if_the_client_forged_hops() {
        let resolver = ClientIp::new(&["10.0.0.0/8".into(), "192.0.2.7".into()]);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        // The client wrote "6.6.6.6"; our proxies appended the real client and one another.
        let h = headers("6.6.6.6, 198.51.100.20, 192.0.2.7");
        assert_eq!(
            resolver.resolve(proxy, &h),
            "198.51.100.20".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolver.resolve(proxy, &headers("garbage, 10.2.2.2")),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }
}
