//! The systemd notification protocol (`Type=notify`): READY when the
//! listeners are up, RELOADING/READY around a configuration reload,
//! STOPPING on shutdown; datagrams to `$NOTIFY_SOCKET` (a path, or an
//! abstract socket written with a leading `@`). Silent when not under
//! systemd.

use std::os::unix::net::UnixDatagram;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "cannot notify systemd");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd's MONOTONIC_USEC wants it.
fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

pub fn ready() {
    send("READY=1\nSTATUS=accepting mail");
}

pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

pub fn stopping() {
    send("STOPPING=1\nSTATUS=finishing transactions in flight");
}
