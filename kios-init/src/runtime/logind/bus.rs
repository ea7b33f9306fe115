//! What kios-init answers on the system bus: the few methods of the bus
//! itself (`Hello`, `AddMatch`, ...), the inhibit part of
//! `org.freedesktop.login1.Manager` (properties, `Inhibit`,
//! `ListInhibitors`), systemd's `KillUnit` for `systemd-logind.service`, and
//! the `PrepareForShutdown` signal. Pure: a call and the bus state in, an
//! action out; the server does the I/O (pipes, descriptors, sockets).
//!
//! Everything else gets a D-Bus error reply, never silence.

use std::collections::BTreeMap;

use super::wire::{Kind, Message, Type, Value};

pub const BUS_NAME: &str = "org.freedesktop.DBus";
pub const BUS_PATH: &str = "/org/freedesktop/DBus";
pub const LOGIND_NAME: &str = "org.freedesktop.login1";
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";
pub const MANAGER: &str = "org.freedesktop.login1.Manager";
pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
pub const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub const PEER: &str = "org.freedesktop.DBus.Peer";
/// The unique name logind's (and systemd's) replies and signals come from.
pub const LOGIND_UNIQUE: &str = ":1.0";

/// Most inhibitors at once, and per connection.
pub const MAX_INHIBITORS: usize = 16;
pub const MAX_INHIBITORS_PER_CLIENT: usize = 4;
/// Most match rules per connection.
pub const MAX_MATCHES: usize = 16;
/// Longest `who`, `why` or match rule kept.
pub const MAX_TEXT: usize = 512;

pub mod errors {
    pub const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
    pub const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";
    pub const UNKNOWN_INTERFACE: &str = "org.freedesktop.DBus.Error.UnknownInterface";
    pub const UNKNOWN_PROPERTY: &str = "org.freedesktop.DBus.Error.UnknownProperty";
    pub const READ_ONLY: &str = "org.freedesktop.DBus.Error.PropertyReadOnly";
    pub const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    pub const NOT_SUPPORTED: &str = "org.freedesktop.DBus.Error.NotSupported";
    pub const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
    pub const FAILED: &str = "org.freedesktop.DBus.Error.Failed";
    pub const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
    pub const MATCH_NOT_FOUND: &str = "org.freedesktop.DBus.Error.MatchRuleNotFound";
}

/// One connected, authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: u64,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
    pub unix_fds: bool,
    pub unique: Option<String>,
    pub matches: Vec<String>,
}

/// A held inhibitor lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    pub id: u64,
    pub client: u64,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
    pub what: String,
    pub who: String,
    pub why: String,
    pub mode: String,
    pub since_ms: u64,
}

/// What an `Inhibit` call asks for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InhibitRequest {
    pub what: String,
    pub who: String,
    pub why: String,
    pub mode: String,
}

/// What the server must do for a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this message to the caller.
    Send(Message),
    /// Send this reply, then `PrepareForShutdown(true)` (a client that
    /// subscribed while a shutdown drains has missed the signal).
    SendThenSignal(Message),
    /// Make a pipe, keep the read end, and answer with
    /// [`Bus::inhibitor_taken`].
    Inhibit(InhibitRequest),
    /// Re-read the delay, set it with [`Bus::set_delay`], then send
    /// [`Bus::reply`] with an empty body.
    ReloadDelay,
    /// Nothing to send (not a call, or no reply wanted).
    Nothing,
}

/// The bus's own state.
#[derive(Debug, Default)]
pub struct Bus {
    /// InhibitDelayMaxUSec.
    pub delay_usec: u64,
    /// PrepareForShutdown(true) was sent and not taken back.
    pub preparing: bool,
    serial: u32,
    next_unique: u64,
    next_inhibitor: u64,
    pub inhibitors: BTreeMap<u64, Inhibitor>,
}

fn bad_args(call: &Message, want: &str) -> Result<(), String> {
    let got = call.signature();
    if got == want {
        Ok(())
    } else {
        Err(format!("arguments of type {got:?}, expected {want:?}"))
    }
}

fn str_arg(call: &Message, n: usize) -> &str {
    call.body.get(n).and_then(Value::as_str).unwrap_or("")
}

impl Bus {
    pub fn new(delay_usec: u64) -> Bus {
        Bus {
            delay_usec,
            ..Bus::default()
        }
    }

    fn next_serial(&mut self) -> u32 {
        self.serial = self.serial.wrapping_add(1).max(1);
        self.serial
    }

    /// A successful reply to `call` from `sender`.
    pub fn reply_from(&mut self, sender: &str, call: &Message, body: Vec<Value>) -> Message {
        let serial = self.next_serial();
        Message::method_return(serial, call, body).with_sender(sender)
    }

    /// A successful reply from logind.
    pub fn reply(&mut self, call: &Message, body: Vec<Value>) -> Message {
        self.reply_from(LOGIND_UNIQUE, call, body)
    }

    /// An error reply. Its text often names what the caller sent (a path,
    /// a member); it is cut to [`MAX_TEXT`] bytes so that the reply to the
    /// largest call still fits in one message.
    pub fn error(&mut self, call: &Message, name: &str, text: &str) -> Message {
        let mut text = text;
        if text.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text = &text[..end];
        }
        let serial = self.next_serial();
        let sender = if call.destination.as_deref() == Some(BUS_NAME) {
            BUS_NAME
        } else {
            LOGIND_UNIQUE
        };
        Message::error(serial, call, name, text).with_sender(sender)
    }

    /// `PrepareForShutdown(start)` from logind.
    pub fn prepare_for_shutdown(&mut self, start: bool) -> Message {
        let serial = self.next_serial();
        Message::signal(
            serial,
            LOGIND_PATH,
            MANAGER,
            "PrepareForShutdown",
            vec![Value::Bool(start)],
        )
        .with_sender(LOGIND_UNIQUE)
    }

    pub fn set_delay(&mut self, usec: u64) {
        self.delay_usec = usec;
    }

    /// Delay inhibitors that cover shutdown.
    pub fn delay_inhibitors(&self) -> usize {
        self.inhibitors.len()
    }

    /// Records the lock the server made a pipe for; returns it and the
    /// reply that carries the descriptor (index 0).
    pub fn inhibitor_taken(
        &mut self,
        client: &Client,
        call: &Message,
        request: InhibitRequest,
        now_ms: u64,
    ) -> (Inhibitor, Message) {
        self.next_inhibitor += 1;
        let inhibitor = Inhibitor {
            id: self.next_inhibitor,
            client: client.id,
            pid: client.pid,
            uid: client.uid,
            command: client.command.clone(),
            what: request.what,
            who: request.who,
            why: request.why,
            mode: request.mode,
            since_ms: now_ms,
        };
        self.inhibitors.insert(inhibitor.id, inhibitor.clone());
        let mut reply = self.reply(call, vec![Value::Fd(0)]);
        reply.unix_fds = 1;
        (inhibitor, reply)
    }

    /// The read end saw EOF: every copy of the write end is closed.
    pub fn inhibitor_released(&mut self, id: u64) -> Option<Inhibitor> {
        self.inhibitors.remove(&id)
    }

    fn property(&self, name: &str) -> Option<Value> {
        let delay_what = if self.inhibitors.is_empty() {
            ""
        } else {
            "shutdown"
        };
        Some(match name {
            "InhibitDelayMaxUSec" => Value::Uint64(self.delay_usec),
            "InhibitorsMax" => Value::Uint64(MAX_INHIBITORS as u64),
            "NCurrentInhibitors" => Value::Uint64(self.inhibitors.len() as u64),
            "DelayInhibited" => Value::Str(delay_what.into()),
            "BlockInhibited" => Value::Str(String::new()),
            "PreparingForShutdown" => Value::Bool(self.preparing),
            _ => return None,
        })
    }

    const PROPERTIES: [&'static str; 6] = [
        "InhibitDelayMaxUSec",
        "InhibitorsMax",
        "NCurrentInhibitors",
        "DelayInhibited",
        "BlockInhibited",
        "PreparingForShutdown",
    ];

    /// Decides what to do with one message from `client`.
    pub fn handle(&mut self, client: &mut Client, call: &Message) -> Action {
        if call.kind != Kind::MethodCall {
            // Replies and signals from clients mean nothing to us.
            return Action::Nothing;
        }
        let action = self.route(client, call);
        match action {
            Action::Send(_) | Action::SendThenSignal(_) if !call.wants_reply() => Action::Nothing,
            other => other,
        }
    }

    fn route(&mut self, client: &mut Client, call: &Message) -> Action {
        let path = call.path.as_deref().unwrap_or("");
        let member = call.member.as_deref().unwrap_or("");
        let interface = call.interface.as_deref();
        let to_bus = call.destination.as_deref() == Some(BUS_NAME)
            || (call.destination.is_none() && interface == Some(BUS_NAME));
        let result = if interface == Some(PEER) {
            match member {
                "Ping" => Ok(Action::Send(self.reply(call, vec![]))),
                _ => Err((
                    errors::UNKNOWN_METHOD,
                    format!("no method {member} on {PEER}"),
                )),
            }
        } else if to_bus {
            self.bus_method(client, call, member)
        } else if path == LOGIND_PATH {
            self.logind_method(client, call, interface, member)
        } else if path == SYSTEMD_PATH {
            self.systemd_method(call, interface, member)
        } else {
            Err((
                errors::UNKNOWN_OBJECT,
                format!("no object {path}: kiOS serves only {LOGIND_PATH} and {SYSTEMD_PATH}"),
            ))
        };
        match result {
            Ok(action) => action,
            Err((name, text)) => Action::Send(self.error(call, name, &text)),
        }
    }

    fn bus_method(
        &mut self,
        client: &mut Client,
        call: &Message,
        member: &str,
    ) -> Result<Action, (&'static str, String)> {
        let invalid = |e: String| (errors::INVALID_ARGS, e);
        let body = match member {
            "Hello" => {
                if client.unique.is_some() {
                    return Err((errors::FAILED, "Hello was already called".into()));
                }
                self.next_unique += 1;
                let name = format!(":1.{}", self.next_unique);
                client.unique = Some(name.clone());
                vec![Value::Str(name)]
            }
            "AddMatch" => {
                bad_args(call, "s").map_err(invalid)?;
                let rule = str_arg(call, 0);
                if rule.len() > MAX_TEXT || client.matches.len() >= MAX_MATCHES {
                    return Err((
                        errors::LIMITS_EXCEEDED,
                        format!("at most {MAX_MATCHES} match rules of {MAX_TEXT} bytes"),
                    ));
                }
                client.matches.push(rule.to_string());
                let reply = self.reply_from(BUS_NAME, call, vec![]);
                return Ok(if self.preparing {
                    Action::SendThenSignal(reply)
                } else {
                    Action::Send(reply)
                });
            }
            "RemoveMatch" => {
                bad_args(call, "s").map_err(invalid)?;
                let rule = str_arg(call, 0);
                let Some(at) = client.matches.iter().position(|m| m == rule) else {
                    return Err((errors::MATCH_NOT_FOUND, format!("no match rule {rule:?}")));
                };
                client.matches.remove(at);
                vec![]
            }
            "GetNameOwner" | "NameHasOwner" => {
                bad_args(call, "s").map_err(invalid)?;
                let name = str_arg(call, 0);
                let owner = match name {
                    BUS_NAME => Some(BUS_NAME),
                    LOGIND_NAME | SYSTEMD_NAME | LOGIND_UNIQUE => Some(LOGIND_UNIQUE),
                    _ => None,
                };
                match (member, owner) {
                    ("NameHasOwner", owner) => vec![Value::Bool(owner.is_some())],
                    (_, Some(owner)) => vec![Value::Str(owner.into())],
                    (_, None) => {
                        return Err((errors::NAME_HAS_NO_OWNER, format!("no owner for {name}")))
                    }
                }
            }
            _ => {
                return Err((
                    errors::UNKNOWN_METHOD,
                    format!("kiOS's bus does not implement {BUS_NAME}.{member}"),
                ))
            }
        };
        Ok(Action::Send(self.reply_from(BUS_NAME, call, body)))
    }

    fn logind_method(
        &mut self,
        client: &mut Client,
        call: &Message,
        interface: Option<&str>,
        member: &str,
    ) -> Result<Action, (&'static str, String)> {
        let invalid = |e: String| (errors::INVALID_ARGS, e);
        match (interface, member) {
            (Some(PROPERTIES), "Get") => {
                bad_args(call, "ss").map_err(invalid)?;
                let (iface, name) = (str_arg(call, 0), str_arg(call, 1));
                if iface != MANAGER {
                    return Err((errors::UNKNOWN_INTERFACE, format!("no interface {iface}")));
                }
                let value = self.property(name).ok_or_else(|| {
                    (
                        errors::UNKNOWN_PROPERTY,
                        format!("kiOS does not emulate the property {name}"),
                    )
                })?;
                Ok(Action::Send(
                    self.reply(call, vec![Value::Variant(Box::new(value))]),
                ))
            }
            (Some(PROPERTIES), "GetAll") => {
                bad_args(call, "s").map_err(invalid)?;
                let iface = str_arg(call, 0);
                if iface != MANAGER {
                    return Err((errors::UNKNOWN_INTERFACE, format!("no interface {iface}")));
                }
                let items = Self::PROPERTIES
                    .iter()
                    .filter_map(|name| {
                        let value = self.property(name)?;
                        Some((Value::Str((*name).into()), Value::Variant(Box::new(value))))
                    })
                    .collect();
                let dict = Value::Dict(Type::Str, Type::Variant, items);
                Ok(Action::Send(self.reply(call, vec![dict])))
            }
            (Some(PROPERTIES), "Set") => Err((
                errors::READ_ONLY,
                "kiOS's logind properties are read-only".into(),
            )),
            (Some(MANAGER) | None, "Inhibit") => {
                bad_args(call, "ssss").map_err(invalid)?;
                let request = InhibitRequest {
                    what: str_arg(call, 0).into(),
                    who: str_arg(call, 1).into(),
                    why: str_arg(call, 2).into(),
                    mode: str_arg(call, 3).into(),
                };
                self.check_inhibit(client, &request)?;
                Ok(Action::Inhibit(request))
            }
            (Some(MANAGER) | None, "ListInhibitors") => {
                let item = Type::Struct(vec![
                    Type::Str,
                    Type::Str,
                    Type::Str,
                    Type::Str,
                    Type::Uint32,
                    Type::Uint32,
                ]);
                let items = self
                    .inhibitors
                    .values()
                    .map(|i| {
                        Value::Struct(vec![
                            Value::Str(i.what.clone()),
                            Value::Str(i.who.clone()),
                            Value::Str(i.why.clone()),
                            Value::Str(i.mode.clone()),
                            Value::Uint32(i.uid.unwrap_or(u32::MAX)),
                            Value::Uint32(i.pid.map_or(0, |p| p.max(0) as u32)),
                        ])
                    })
                    .collect();
                Ok(Action::Send(
                    self.reply(call, vec![Value::Array(item, items)]),
                ))
            }
            (Some(MANAGER) | None, _) => Err((
                errors::UNKNOWN_METHOD,
                format!("kiOS emulates only logind's inhibitors, not {MANAGER}.{member}"),
            )),
            (Some(other), _) => Err((
                errors::UNKNOWN_INTERFACE,
                format!("no interface {other} on {LOGIND_PATH}"),
            )),
        }
    }

    fn check_inhibit(
        &self,
        client: &Client,
        r: &InhibitRequest,
    ) -> Result<(), (&'static str, String)> {
        if r.who.len() > MAX_TEXT || r.why.len() > MAX_TEXT || r.what.len() > MAX_TEXT {
            return Err((
                errors::INVALID_ARGS,
                format!("who, why and what are at most {MAX_TEXT} bytes"),
            ));
        }
        if !r.what.split(':').any(|w| w == "shutdown") {
            return Err((
                errors::NOT_SUPPORTED,
                format!("kiOS inhibits only shutdown, not {:?}", r.what),
            ));
        }
        match r.mode.as_str() {
            "delay" => {}
            "block" | "block-weak" => {
                return Err((
                    errors::NOT_SUPPORTED,
                    "kiOS supports delay inhibitors only".into(),
                ))
            }
            other => return Err((errors::INVALID_ARGS, format!("invalid mode {other:?}"))),
        }
        if !client.unix_fds {
            return Err((
                errors::NOT_SUPPORTED,
                "an inhibitor is a descriptor: negotiate descriptor passing (NEGOTIATE_UNIX_FD)"
                    .into(),
            ));
        }
        let own = self
            .inhibitors
            .values()
            .filter(|i| i.client == client.id)
            .count();
        if self.inhibitors.len() >= MAX_INHIBITORS || own >= MAX_INHIBITORS_PER_CLIENT {
            return Err((
                errors::LIMITS_EXCEEDED,
                format!(
                    "at most {MAX_INHIBITORS} inhibitors, {MAX_INHIBITORS_PER_CLIENT} per connection"
                ),
            ));
        }
        Ok(())
    }

    fn systemd_method(
        &mut self,
        call: &Message,
        interface: Option<&str>,
        member: &str,
    ) -> Result<Action, (&'static str, String)> {
        match (interface, member) {
            (Some(SYSTEMD_MANAGER) | None, "KillUnit") => {
                bad_args(call, "ssi").map_err(|e| (errors::INVALID_ARGS, e))?;
                let unit = str_arg(call, 0);
                if unit == "systemd-logind.service" {
                    Ok(Action::ReloadDelay)
                } else {
                    Err((
                        errors::NOT_SUPPORTED,
                        format!("kiOS has no unit {unit}; only systemd-logind.service is emulated"),
                    ))
                }
            }
            _ => Err((
                errors::UNKNOWN_METHOD,
                format!("kiOS is not systemd: {member} is not implemented"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            id: 1,
            pid: Some(42),
            uid: Some(0),
            command: Some("kubelet".into()),
            unix_fds: true,
            unique: None,
            matches: vec![],
        }
    }

    fn call(path: &str, dest: &str, iface: &str, member: &str, body: Vec<Value>) -> Message {
        let mut m = Message::method_call(5, path, iface, member);
        m.destination = Some(dest.into());
        m.body = body;
        m
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    fn sent(action: Action) -> Message {
        match action {
            Action::Send(m) => m,
            other => panic!("not a send: {other:?}"),
        }
    }

    fn error_name(action: Action) -> String {
        let m = sent(action);
        assert_eq!(m.kind, Kind::Error);
        m.error_name.unwrap_or_default()
    }

    #[test]
    fn the_kubelet_sequence() {
        let mut bus = Bus::new(35_000_000);
        let mut c = client();
        let hello = sent(bus.handle(&mut c, &call(BUS_PATH, BUS_NAME, BUS_NAME, "Hello", vec![])));
        assert_eq!(hello.body, vec![s(":1.1")]);
        assert_eq!(hello.reply_serial, Some(5));
        assert_eq!(hello.sender.as_deref(), Some(BUS_NAME));
        let get = call(
            LOGIND_PATH,
            LOGIND_NAME,
            PROPERTIES,
            "Get",
            vec![s(MANAGER), s("InhibitDelayMaxUSec")],
        );
        let value = sent(bus.handle(&mut c, &get));
        assert_eq!(
            value.body,
            vec![Value::Variant(Box::new(Value::Uint64(35_000_000)))]
        );
        let inhibit = call(
            LOGIND_PATH,
            LOGIND_NAME,
            MANAGER,
            "Inhibit",
            vec![s("shutdown"), s("kubelet"), s("drain"), s("delay")],
        );
        let Action::Inhibit(req) = bus.handle(&mut c, &inhibit) else {
            panic!("no inhibit");
        };
        let (lock, reply) = bus.inhibitor_taken(&c, &inhibit, req, 100);
        assert_eq!((reply.unix_fds, &reply.body[..]), (1, &[Value::Fd(0)][..]));
        assert_eq!(lock.pid, Some(42));
        assert_eq!(bus.delay_inhibitors(), 1);
        let rule = "type='signal',interface='org.freedesktop.login1.Manager',member='PrepareForShutdown',path='/org/freedesktop/login1'";
        let add = call(BUS_PATH, BUS_NAME, BUS_NAME, "AddMatch", vec![s(rule)]);
        assert_eq!(sent(bus.handle(&mut c, &add)).kind, Kind::MethodReturn);
        assert_eq!(c.matches, vec![rule.to_string()]);
        // While draining, a late subscriber is told at once.
        bus.preparing = true;
        assert!(matches!(
            bus.handle(&mut c, &add),
            Action::SendThenSignal(_)
        ));
        assert_eq!(bus.inhibitor_released(lock.id), Some(lock));
        assert_eq!(bus.delay_inhibitors(), 0);
        let kill = call(
            SYSTEMD_PATH,
            SYSTEMD_NAME,
            SYSTEMD_MANAGER,
            "KillUnit",
            vec![s("systemd-logind.service"), s("all"), Value::Int32(1)],
        );
        assert_eq!(bus.handle(&mut c, &kill), Action::ReloadDelay);
    }

    #[test]
    fn everything_else_gets_an_error() {
        let mut bus = Bus::new(1);
        let mut c = client();
        let cases = [
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    MANAGER,
                    "PowerOff",
                    vec![Value::Bool(false)],
                ),
                errors::UNKNOWN_METHOD,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    MANAGER,
                    "Inhibit",
                    vec![s("sleep"), s("a"), s("b"), s("delay")],
                ),
                errors::NOT_SUPPORTED,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    MANAGER,
                    "Inhibit",
                    vec![s("shutdown"), s("a"), s("b"), s("block")],
                ),
                errors::NOT_SUPPORTED,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    MANAGER,
                    "Inhibit",
                    vec![s("shutdown"), s("a"), s("b"), s("x")],
                ),
                errors::INVALID_ARGS,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    MANAGER,
                    "Inhibit",
                    vec![s("shutdown")],
                ),
                errors::INVALID_ARGS,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    PROPERTIES,
                    "Get",
                    vec![s(MANAGER), s("IdleHint")],
                ),
                errors::UNKNOWN_PROPERTY,
            ),
            (
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    PROPERTIES,
                    "Get",
                    vec![s("org.x"), s("IdleHint")],
                ),
                errors::UNKNOWN_INTERFACE,
            ),
            (
                call(LOGIND_PATH, LOGIND_NAME, PROPERTIES, "Set", vec![]),
                errors::READ_ONLY,
            ),
            (
                call("/org/other", LOGIND_NAME, MANAGER, "Inhibit", vec![]),
                errors::UNKNOWN_OBJECT,
            ),
            (
                call(
                    SYSTEMD_PATH,
                    SYSTEMD_NAME,
                    SYSTEMD_MANAGER,
                    "KillUnit",
                    vec![s("crio.service"), s("all"), Value::Int32(1)],
                ),
                errors::NOT_SUPPORTED,
            ),
            (
                call(
                    SYSTEMD_PATH,
                    SYSTEMD_NAME,
                    SYSTEMD_MANAGER,
                    "StartUnit",
                    vec![],
                ),
                errors::UNKNOWN_METHOD,
            ),
            (
                call(BUS_PATH, BUS_NAME, BUS_NAME, "RequestName", vec![]),
                errors::UNKNOWN_METHOD,
            ),
            (
                call(BUS_PATH, BUS_NAME, BUS_NAME, "RemoveMatch", vec![s("x")]),
                errors::MATCH_NOT_FOUND,
            ),
            (
                call(
                    BUS_PATH,
                    BUS_NAME,
                    BUS_NAME,
                    "GetNameOwner",
                    vec![s("org.x")],
                ),
                errors::NAME_HAS_NO_OWNER,
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(
                error_name(bus.handle(&mut c, &msg)),
                want,
                "{:?}",
                msg.member
            );
        }
        // Without descriptor passing there is no lock to give.
        c.unix_fds = false;
        let inhibit = call(
            LOGIND_PATH,
            LOGIND_NAME,
            MANAGER,
            "Inhibit",
            vec![s("shutdown"), s("a"), s("b"), s("delay")],
        );
        assert_eq!(
            error_name(bus.handle(&mut c, &inhibit)),
            errors::NOT_SUPPORTED
        );
        // A second Hello.
        bus.handle(&mut c, &call(BUS_PATH, BUS_NAME, BUS_NAME, "Hello", vec![]));
        let again = bus.handle(&mut c, &call(BUS_PATH, BUS_NAME, BUS_NAME, "Hello", vec![]));
        assert_eq!(error_name(again), errors::FAILED);
    }

    #[test]
    fn limits_on_inhibitors_and_matches() {
        let mut bus = Bus::new(1);
        let mut c = client();
        let inhibit = call(
            LOGIND_PATH,
            LOGIND_NAME,
            MANAGER,
            "Inhibit",
            vec![s("shutdown"), s("a"), s("b"), s("delay")],
        );
        for _ in 0..MAX_INHIBITORS_PER_CLIENT {
            let Action::Inhibit(req) = bus.handle(&mut c, &inhibit) else {
                panic!("refused too early");
            };
            bus.inhibitor_taken(&c, &inhibit, req, 0);
        }
        assert_eq!(
            error_name(bus.handle(&mut c, &inhibit)),
            errors::LIMITS_EXCEEDED
        );
        for n in 0..MAX_MATCHES {
            let add = call(
                BUS_PATH,
                BUS_NAME,
                BUS_NAME,
                "AddMatch",
                vec![s(&format!("member='M{n}'"))],
            );
            assert!(matches!(bus.handle(&mut c, &add), Action::Send(_)));
        }
        let add = call(
            BUS_PATH,
            BUS_NAME,
            BUS_NAME,
            "AddMatch",
            vec![s("member='x'")],
        );
        assert_eq!(
            error_name(bus.handle(&mut c, &add)),
            errors::LIMITS_EXCEEDED
        );
    }

    #[test]
    fn get_all_and_no_reply_expected() {
        let mut bus = Bus::new(7);
        let mut c = client();
        let all = sent(bus.handle(
            &mut c,
            &call(
                LOGIND_PATH,
                LOGIND_NAME,
                PROPERTIES,
                "GetAll",
                vec![s(MANAGER)],
            ),
        ));
        let Value::Dict(_, _, items) = &all.body[0] else {
            panic!("not a dict");
        };
        assert_eq!(items.len(), Bus::PROPERTIES.len());
        assert_eq!(items[0].1, Value::Variant(Box::new(Value::Uint64(7))));
        let mut quiet = call(
            BUS_PATH,
            BUS_NAME,
            BUS_NAME,
            "AddMatch",
            vec![s("member='x'")],
        );
        quiet.flags = crate::runtime::logind::wire::NO_REPLY_EXPECTED;
        assert_eq!(bus.handle(&mut c, &quiet), Action::Nothing);
        assert_eq!(c.matches.len(), 1, "the match is still added");
        let signal = bus.prepare_for_shutdown(true);
        assert_eq!(signal.kind, Kind::Signal);
        assert_eq!(signal.body, vec![Value::Bool(true)]);
    }

    /// Error texts echo what the caller sent (a path, a member, a unit
    /// name); a caller's largest message must still get an error reply
    /// that fits in one message, or the server drops it and the caller
    /// waits for ever.
    #[test]
    fn error_replies_to_the_largest_calls_still_encode() {
        use crate::runtime::logind::wire::{decode, encode, MAX_MESSAGE};
        let mut bus = Bus::new(1);
        let mut c = client();
        let shapes: [&dyn Fn(&str) -> Message; 11] = [
            &|l| call("/nope", LOGIND_NAME, MANAGER, "Inhibit", vec![]).with_sender(l),
            &|l| call(&format!("/{l}"), LOGIND_NAME, MANAGER, "Inhibit", vec![]),
            &|l| call(LOGIND_PATH, LOGIND_NAME, MANAGER, l, vec![]),
            &|l| call(LOGIND_PATH, LOGIND_NAME, l, "Get", vec![]),
            &|l| call(BUS_PATH, BUS_NAME, BUS_NAME, l, vec![]),
            &|l| call("/x", LOGIND_NAME, PEER, l, vec![]),
            &|l| {
                let body = vec![s(l), s("all"), Value::Int32(1)];
                call(
                    SYSTEMD_PATH,
                    SYSTEMD_NAME,
                    SYSTEMD_MANAGER,
                    "KillUnit",
                    body,
                )
            },
            &|l| {
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    PROPERTIES,
                    "Get",
                    vec![s(MANAGER), s(l)],
                )
            },
            &|l| {
                call(
                    LOGIND_PATH,
                    LOGIND_NAME,
                    PROPERTIES,
                    "Get",
                    vec![s(l), s("x")],
                )
            },
            &|l| call(BUS_PATH, BUS_NAME, BUS_NAME, "RemoveMatch", vec![s(l)]),
            &|l| call(BUS_PATH, BUS_NAME, BUS_NAME, "GetNameOwner", vec![s(l)]),
        ];
        // Each shape at the longest text whose call still fits.
        let calls = shapes.map(|shape| {
            (0..MAX_MESSAGE)
                .rev()
                .step_by(4)
                .map(|n| shape(&"a".repeat(n)))
                .find(|m| encode(m).is_ok())
                .expect("some length fits")
        });
        for call in calls {
            assert!(encode(&call).is_ok(), "the call itself fits");
            let reply = sent(bus.handle(&mut c, &call));
            assert_eq!(reply.kind, Kind::Error);
            let bytes = encode(&reply).unwrap_or_else(|e| panic!("{e}: {:?}", reply.error_name));
            assert!(bytes.len() <= MAX_MESSAGE && decode(&bytes).is_ok());
        }
    }
}
