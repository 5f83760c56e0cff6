//! Who may connect: `server.max_connections` sessions in all, `server.max_connections_per_ip`
//! from one client address (except exempt networks), and each listener's own
//! `max_connections`. Fixed at start: a reload that changes them says they need a restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{ListenerConfig, ServerConfig};
use crate::replies;
use crate::smtp::Reply;

/// Open sessions per client address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Admission {
    total: Arc<Semaphore>,
    per_ip: PerAddress,
    max_per_ip: usize,
    exempt: Vec<ipnet::IpNet>,
    /// Per listener, in listener order.
    listeners: Vec<Option<Arc<Semaphore>>>,
}

/// A session's place, given back when it is dropped.
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    _listener: Option<OwnedSemaphorePermit>,
    ip: Option<(IpAddr, PerAddress)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ip, per_ip)) = self.ip.take() {
            let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was refused: the reply it gets and the limit's name for the metrics.
pub struct Refusal {
    pub reply: Reply,
    pub limit: &'static str,
}

impl Admission {
    pub fn new(config: &ServerConfig, listeners: &[ListenerConfig]) -> Self {
        Self {
            total: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: Arc::default(),
            max_per_ip: config.max_connections_per_ip,
            exempt: config.connection_limit_exempt.clone(),
            listeners: listeners.iter().map(|l| l.max_connections.map(|n| Arc::new(Semaphore::new(n)))).collect(),
        }
    }

    /// A place for a client from `ip` on listener `index`, or the refusal.
    pub fn admit(&self, ip: IpAddr, index: usize) -> Result<Admitted, Refusal> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal { reply: replies::too_many_connections(), limit: "max_connections" })?;
        let listener =
            match self.listeners.get(index).cloned().flatten() {
                None => None,
                Some(limit) => Some(limit.try_acquire_owned().map_err(|_| Refusal {
                    reply: replies::too_many_connections(),
                    limit: "listener_max_connections",
                })?),
            };
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(Admitted { _total: total, _listener: listener, ip: None });
        }
        let mut counts = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal { reply: replies::too_many_connections_from_you(), limit: "max_connections_per_ip" });
        }
        *n += 1;
        Ok(Admitted { _total: total, _listener: listener, ip: Some((ip, self.per_ip.clone())) })
    }
}
