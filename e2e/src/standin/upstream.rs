//! The kubelet stand-in's `mode=upstream`: what the upstream kubelet's
//! graceful node shutdown does on the system D-Bus (kubernetes
//! pkg/kubelet/nodeshutdown/systemd), here over zbus (a real D-Bus client
//! library, not our codec): connect to `$DBUS_SYSTEM_BUS_ADDRESS` (default
//! /var/run/dbus/system_bus_socket), authenticate, `Hello`, read
//! `InhibitDelayMaxUSec`; when it is shorter than the grace, write the
//! logind drop-in, `KillUnit("systemd-logind.service")` and read it again;
//! take a delay lock with `Inhibit`, match `PrepareForShutdown`, and on
//! `true` evict for the grace, then close the lock's descriptor. If the
//! connection drops, reconnect a second later, lock again and release the
//! old lock.
//!
//! Progress lines (`KIOS-E2E kubelet ...`): `upstream connected`,
//! `upstream delay usec=N`, `upstream killunit before=N after=M`,
//! `upstream delay-too-small`, `upstream inhibited`, `upstream subscribed`,
//! `prepare-for-shutdown start=B`, `evicting grace_ms=N`, `grace-done`,
//! `lock-released`, `not-answering`, `upstream dropped`, `upstream
//! old-lock-released`, `upstream error ...`.
//!
//! Keys of kubelet.conf used here: `grace_ms` (else config.yaml's
//! shutdownGracePeriod), `answer_shutdown=false` (never close the lock),
//! `drop_after_ms=N` (drop the first connection N ms after locking, keeping
//! the lock, as when the bus goes away), `set_config_grace=DURATION` (before
//! connecting, rewrite config.yaml's shutdownGracePeriod, as an operator
//! raising it does before the kubelet restarts).

use std::os::fd::OwnedFd;
use std::time::Duration;

use zbus::blocking::{Connection, MessageIterator};
use zbus::zvariant;

use super::kubelet::{grace_ms, KUBELET_CONFIG};
use super::{emit, Config};

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";
const LOGIND_DROPIN_DIR: &str = "/etc/systemd/logind.conf.d";
/// The kubelet's dbusReconnectPeriod.
const RECONNECT: Duration = Duration::from_secs(1);

/// Runs the upstream mode; returns only on a fatal error (exit code).
pub fn main(config: &Config) -> i32 {
    if let Some(grace) = config.get("set_config_grace") {
        set_config_grace(grace);
    }
    let grace = Duration::from_millis(grace_ms(config));
    let answer = config.bool_or("answer_shutdown", true);
    let mut drop_after = config
        .get("drop_after_ms")
        .map(|_| config.u64_or("drop_after_ms", 0));
    let mut old_lock: Option<OwnedFd> = None;
    loop {
        match session(grace, answer, &mut drop_after, &mut old_lock) {
            Ok(()) => emit("kubelet upstream dropped"),
            Err(e) => emit(&format!("kubelet upstream error {e}")),
        }
        std::thread::sleep(RECONNECT);
    }
}

fn set_config_grace(grace: &str) {
    let text = std::fs::read_to_string(KUBELET_CONFIG).unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("shutdownGracePeriod:"))
        .map(str::to_string)
        .collect();
    out.push(format!("shutdownGracePeriod: {grace}"));
    if let Err(e) = std::fs::write(KUBELET_CONFIG, out.join("\n") + "\n") {
        emit(&format!(
            "kubelet upstream error cannot write {KUBELET_CONFIG}: {e}"
        ));
    }
}

fn inhibit_delay(conn: &Connection) -> zbus::Result<u64> {
    let reply = conn.call_method(
        Some(LOGIND),
        LOGIND_PATH,
        Some("org.freedesktop.DBus.Properties"),
        "Get",
        &(MANAGER, "InhibitDelayMaxUSec"),
    )?;
    let value: zvariant::OwnedValue = reply.body().deserialize()?;
    u64::try_from(value).map_err(zbus::Error::from)
}

/// One connection: from connect to the connection dropping.
fn session(
    grace: Duration,
    answer: bool,
    drop_after: &mut Option<u64>,
    old_lock: &mut Option<OwnedFd>,
) -> zbus::Result<()> {
    let conn = Connection::system()?;
    emit("kubelet upstream connected");
    let delay = inhibit_delay(&conn)?;
    emit(&format!("kubelet upstream delay usec={delay}"));
    let wanted = u64::try_from(grace.as_micros()).unwrap_or(u64::MAX);
    if wanted > delay {
        // The kubelet's OverrideInhibitDelay and ReloadLogindConf.
        let dropin = format!(
            "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec={}\n",
            grace.as_secs()
        );
        let written = std::fs::create_dir_all(LOGIND_DROPIN_DIR)
            .and_then(|()| std::fs::write(format!("{LOGIND_DROPIN_DIR}/99-kubelet.conf"), dropin));
        if let Err(e) = written {
            emit(&format!(
                "kubelet upstream error cannot write the drop-in: {e}"
            ));
        }
        conn.call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "KillUnit",
            &("systemd-logind.service", "all", 1i32),
        )?;
        let after = inhibit_delay(&conn)?;
        emit(&format!(
            "kubelet upstream killunit before={delay} after={after}"
        ));
        if wanted > after {
            emit("kubelet upstream delay-too-small");
            return Err(zbus::Error::Failure("InhibitDelayMaxUSec too small".into()));
        }
    }
    let reply = conn.call_method(
        Some(LOGIND),
        LOGIND_PATH,
        Some(MANAGER),
        "Inhibit",
        &(
            "shutdown",
            "kubelet",
            "Kubelet needs time to handle node shutdown",
            "delay",
        ),
    )?;
    let fd: zvariant::OwnedFd = reply.body().deserialize()?;
    // The message keeps its own copy of the descriptor: only ours may stay
    // open, or closing it would not release the lock (godbus holds one).
    drop(reply);
    let mut lock = Some(OwnedFd::from(fd));
    emit("kubelet upstream inhibited");
    // The kubelet releases the lock of the last connection after the new one.
    if old_lock.take().is_some() {
        emit("kubelet upstream old-lock-released");
    }
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(MANAGER)?
        .member("PrepareForShutdown")?
        .path(LOGIND_PATH)?
        .build();
    let signals = MessageIterator::for_match_rule(rule, &conn, Some(16))?;
    emit("kubelet upstream subscribed");
    if let Some(ms) = drop_after.take() {
        // Drop this connection after `ms`, keeping the lock.
        std::thread::sleep(Duration::from_millis(ms));
        *old_lock = lock.take();
        return Ok(());
    }
    for message in signals {
        let message = message?;
        let Ok(start) = message.body().deserialize::<bool>() else {
            emit("kubelet upstream error PrepareForShutdown without a bool");
            continue;
        };
        emit(&format!("kubelet prepare-for-shutdown start={start}"));
        if !start {
            continue;
        }
        if !answer {
            emit("kubelet not-answering");
            continue;
        }
        emit(&format!("kubelet evicting grace_ms={}", grace.as_millis()));
        std::thread::sleep(grace);
        emit("kubelet grace-done");
        // Recorded before the close: init stops the kubelet right after.
        emit("kubelet lock-released");
        lock.take();
    }
    Ok(())
}
