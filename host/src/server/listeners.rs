//! Binding the listening sockets: every configured listener before anything else happens (so
//! a port already in use stops the start at once), IPv6 sockets IPv6-only.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

use crate::config::{Config, ListenerConfig};

/// Listen backlog: a small backlog drops connections under load (seen with peers' defaults of
/// 128 in the end-to-end benchmark, `bench/e2e.sh`).
const BACKLOG: u32 = 1024;

/// Binds the listening socket with a large backlog. An IPv6 socket takes IPv6 only, so
/// `0.0.0.0:25` and `[::]:25` can be separate listeners.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        set_ipv6_only(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn set_ipv6_only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A bound listening socket and what it serves.
pub struct BoundListener {
    pub tcp: TcpListener,
    pub config: ListenerConfig,
}

/// Binds every configured listener; an error names the address.
pub fn bind_all(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
    config
        .listeners()
        .into_iter()
        .map(|listener| {
            let tcp = bind(listener.address).with_context(|| format!("cannot listen on {}", listener.address))?;
            Ok(BoundListener { tcp, config: listener })
        })
        .collect()
}

/// Binds the admin listener, if one is configured.
pub fn bind_admin(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    config
        .admin
        .listen
        .map(|addr| bind(addr).with_context(|| format!("cannot listen on {addr} (admin.listen)")))
        .transpose()
}
