//! The original kiOS one-byte dialect, spoken by the patched kubelet.
//!
//! Every command and event is a single byte. The dialect of a connection is
//! chosen by the first byte the client sends (see [`Dialect::of_first_byte`]);
//! a client that never sends anything is treated like a legacy client for
//! events.

/// A legacy command byte sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegacyCommand {
    /// 0x01: start a soft (graceful) shutdown.
    SoftShutdown,
    /// 0x02: the kubelet finished its graceful node shutdown; go on.
    ContinueShutdown,
    /// 0x03: restart the kubelet.
    RestartKubelet,
    /// 0x04: restart cri-o.
    RestartCrio,
}

/// The one event of the legacy dialect: a shutdown has begun.
pub const EVENT_SHUTDOWN: u8 = 0x01;

impl LegacyCommand {
    /// Decodes a command byte; unknown bytes are `None` (and are ignored by
    /// the server, as the original did).
    pub fn from_byte(byte: u8) -> Option<LegacyCommand> {
        match byte {
            0x01 => Some(LegacyCommand::SoftShutdown),
            0x02 => Some(LegacyCommand::ContinueShutdown),
            0x03 => Some(LegacyCommand::RestartKubelet),
            0x04 => Some(LegacyCommand::RestartCrio),
            _ => None,
        }
    }

    /// The wire byte of this command.
    pub fn to_byte(self) -> u8 {
        match self {
            LegacyCommand::SoftShutdown => 0x01,
            LegacyCommand::ContinueShutdown => 0x02,
            LegacyCommand::RestartKubelet => 0x03,
            LegacyCommand::RestartCrio => 0x04,
        }
    }

    /// Whether the command changes the node's state (all of them do).
    pub fn changes_state(self) -> bool {
        true
    }
}

/// The two dialects a connection can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// No byte received yet: gets legacy events.
    Silent,
    /// One-byte commands and events.
    Legacy,
    /// JSON lines.
    Line,
}

impl Dialect {
    /// The dialect chosen by a connection's first byte.
    pub fn of_first_byte(byte: u8) -> Dialect {
        if (0x01..=0x04).contains(&byte) {
            Dialect::Legacy
        } else {
            Dialect::Line
        }
    }

    /// Whether a client in this dialect receives the legacy shutdown byte.
    pub fn gets_legacy_events(self) -> bool {
        matches!(self, Dialect::Silent | Dialect::Legacy)
    }
}
