//! The PROXY protocol (HAProxy's, versions 1 and 2) on a listener behind a load balancer: the
//! header the balancer sends first says who the client really is.
//!
//! The header is read before the greeting, and no further than its end, so whatever the
//! client pipelines after it (SMTP commands, a TLS ClientHello) stays in the socket for the
//! session. Parsing is the `ppp` crate's. A header from a peer outside the listener's
//! `proxy_trusted` networks, a malformed or missing header, or one that does not arrive within
//! [`HEADER_TIMEOUT`] closes the connection without a greeting.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer has to send the header after connecting.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest version 1 header (the specification's bound, CRLF included).
const V1_MAX: usize = 107;
/// A version 2 header's fixed part: the signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// Longest version 2 header accepted: addresses and the TLVs balancers send fit easily.
const V2_MAX: usize = 1024;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The connection as the header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    /// The real client.
    pub client: SocketAddr,
    /// The address the client connected to (the balancer's), when the header gives it.
    pub destination: Option<SocketAddr>,
}

/// Why a connection on a PROXY listener was closed before its greeting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header from an untrusted peer")]
    Untrusted,
    #[error("no PROXY header within {}s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("connection closed or failed before the PROXY header ended: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header on a connection from `peer`, which must be in `trusted`.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
) -> Result<Proxied, ProxyError> {
    if !trusted.iter().any(|net| net.contains(&peer.ip())) {
        return Err(ProxyError::Untrusted);
    }
    let header =
        tokio::time::timeout(HEADER_TIMEOUT, read_header_bytes(stream)).await.map_err(|_| ProxyError::Timeout)??;
    parse(&header, peer)
}

/// The header's bytes, read from the socket and nothing after them.
async fn read_header_bytes(stream: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    let mut header = vec![0; 5];
    stream.read_exact(&mut header).await?;
    if header == b"PROXY" {
        // Version 1 ends at CRLF: take what has arrived up to it, without reading past it.
        let mut peeked = [0; V1_MAX];
        while !header.ends_with(b"\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyError::Invalid(format!("version 1 header longer than {V1_MAX} octets")));
            }
            let n = stream.peek(&mut peeked[..V1_MAX - header.len()]).await?;
            if n == 0 {
                return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let take = memchr::memchr(b'\n', &peeked[..n]).map_or(n, |i| i + 1);
            let start = header.len();
            header.resize(start + take, 0);
            stream.read_exact(&mut header[start..]).await?;
        }
        return Ok(header);
    }
    if !V2_SIGNATURE.starts_with(&header) {
        return Err(ProxyError::Invalid("the connection did not start with a PROXY header".into()));
    }
    header.resize(V2_FIXED, 0);
    stream.read_exact(&mut header[5..]).await?;
    if &header[..12] != V2_SIGNATURE {
        return Err(ProxyError::Invalid("bad version 2 signature".into()));
    }
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if V2_FIXED + length > V2_MAX {
        return Err(ProxyError::Invalid(format!("version 2 header longer than {V2_MAX} octets")));
    }
    header.resize(V2_FIXED + length, 0);
    stream.read_exact(&mut header[V2_FIXED..]).await?;
    Ok(header)
}

/// What a complete header says. A version 1 `UNKNOWN` or a version 2 `LOCAL` header (a
/// balancer's health check) describes the balancer's own connection.
fn parse(header: &[u8], peer: SocketAddr) -> Result<Proxied, ProxyError> {
    let own = Proxied { client: peer, destination: None };
    let parsed = HeaderResult::parse(header);
    if parsed.is_incomplete() {
        return Err(ProxyError::Invalid("truncated header".into()));
    }
    match parsed {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Unknown => own,
            v1::Addresses::Tcp4(a) => Proxied {
                client: (a.source_address, a.source_port).into(),
                destination: Some((a.destination_address, a.destination_port).into()),
            },
            v1::Addresses::Tcp6(a) => Proxied {
                client: (a.source_address, a.source_port).into(),
                destination: Some((a.destination_address, a.destination_port).into()),
            },
        }),
        HeaderResult::V2(Ok(header)) => match (header.command, header.addresses) {
            (v2::Command::Local, _) => Ok(own),
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Ok(Proxied {
                client: (a.source_address, a.source_port).into(),
                destination: Some((a.destination_address, a.destination_port).into()),
            }),
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Ok(Proxied {
                client: (a.source_address, a.source_port).into(),
                destination: Some((a.destination_address, a.destination_port).into()),
            }),
            (v2::Command::Proxy, other) => {
                Err(ProxyError::Invalid(format!("version 2 header for {:?}, not TCP", other.address_family())))
            }
        },
        HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:40000".parse().unwrap()
    }

    #[test]
    fn both_versions_and_both_families_name_the_client() {
        let v1 = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n", peer()).unwrap();
        assert_eq!(v1.client, "192.0.2.7:51234".parse().unwrap());
        assert_eq!(v1.destination, Some("198.51.100.1:25".parse().unwrap()));
        let v1 = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n", peer()).unwrap();
        assert_eq!(v1.client, "[2001:db8::7]:51234".parse().unwrap());
        assert_eq!(parse(b"PROXY UNKNOWN\r\n", peer()).unwrap().client, peer(), "a health check");
        let addresses: SocketAddr = "[2001:db8::9]:1025".parse().unwrap();
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (addresses, "[2001:db8::1]:25".parse::<SocketAddr>().unwrap()),
        )
        .build()
        .unwrap();
        assert_eq!(parse(&v2, peer()).unwrap().client, addresses);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [&b"PROXY TCP4 nonsense\r\n"[..], b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 25\r\n", b"PROXY"] {
            assert!(matches!(parse(bad, peer()), Err(ProxyError::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
