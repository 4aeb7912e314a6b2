//! Free TCP ports on 127.0.0.1 for the control-plane processes.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Error, Result};

/// Picks `n` distinct ports the kernel reports free right now. Another process
/// may take one before we use it; callers retry start-up on "address in use".
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Hold all listeners until every port is chosen so they are distinct.
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io("choosing a free port on 127.0.0.1", e))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("reading a listener address", e))
        })
        .collect()
}
