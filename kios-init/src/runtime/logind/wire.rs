//! The D-Bus message codec: framing, the fixed header, header fields,
//! signatures and marshalled values, decoded from either byte order and
//! encoded little-endian. Pure functions over bytes, no I/O, every input
//! bounded (message size, header fields, fds, nesting).
//!
//! [`decode`] is the entry point for untrusted bytes (and for fuzzing): it
//! tells "need more bytes" ([`DecodeError::Incomplete`]) from "malformed"
//! ([`DecodeError::Malformed`]), never panics and never allocates more than
//! the message it was given.

/// Largest message accepted or produced (header and body). The kubelet's
/// largest call (an AddMatch rule) is a few hundred bytes.
pub const MAX_MESSAGE: usize = 32 * 1024;
/// Most header fields in one message (the spec defines 10).
pub const MAX_HEADER_FIELDS: usize = 16;
/// Most descriptors one message may announce.
pub const MAX_FDS: u32 = 4;
/// Deepest nesting of containers (arrays, structs, variants) in a value.
pub const MAX_DEPTH: usize = 16;
/// Longest bus name (the spec's limit).
pub const MAX_BUS_NAME: usize = 255;
/// Longest signature (the spec's limit).
pub const MAX_SIGNATURE: usize = 255;

/// The four message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MethodCall = 1,
    MethodReturn = 2,
    Error = 3,
    Signal = 4,
}

/// Header flag: the caller wants no reply.
pub const NO_REPLY_EXPECTED: u8 = 0x1;

/// A complete type of a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Byte,
    Bool,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Double,
    Str,
    Path,
    Sig,
    Fd,
    Variant,
    Array(Box<Type>),
    Struct(Vec<Type>),
    /// `a{kv}`: an array of dict entries.
    Dict(Box<Type>, Box<Type>),
}

/// A marshalled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    Int16(i16),
    Uint16(u16),
    Int32(i32),
    Uint32(u32),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    Str(String),
    Path(String),
    Sig(String),
    /// An index into the message's descriptors.
    Fd(u32),
    Variant(Box<Value>),
    /// Element type (needed for an empty array's signature) and items.
    Array(Type, Vec<Value>),
    Struct(Vec<Value>),
    Dict(Type, Type, Vec<(Value, Value)>),
}

/// One message, header and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub flags: u8,
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    /// Descriptors that travel with the message (SCM_RIGHTS).
    pub unix_fds: u32,
    pub body: Vec<Value>,
}

/// Why bytes are not (yet) a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A prefix of a valid message: `needed` bytes in all are required.
    #[error("incomplete message: {needed} bytes needed")]
    Incomplete { needed: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
}

/// What is wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("byte order mark {0:#04x} is neither 'l' nor 'B'")]
    Endian(u8),
    #[error("message type {0} is unknown")]
    Kind(u8),
    #[error("protocol version {0} is not 1")]
    Version(u8),
    #[error("message of {0} bytes is larger than {MAX_MESSAGE}")]
    TooLarge(u64),
    #[error("serial 0 is invalid")]
    ZeroSerial,
    #[error("more than {MAX_HEADER_FIELDS} header fields")]
    TooManyFields,
    #[error("header field {code} has type {found}, not {wanted}")]
    FieldType {
        code: u8,
        found: String,
        wanted: &'static str,
    },
    #[error("header field {0} is required for this message type")]
    MissingField(&'static str),
    #[error("{0} descriptors announced; at most {MAX_FDS}")]
    TooManyFds(u32),
    #[error("descriptor index {index} but only {count} descriptors")]
    FdIndex { index: u32, count: u32 },
    #[error("invalid signature {0:?}")]
    Signature(String),
    #[error("values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("boolean value {0} is neither 0 nor 1")]
    Bool(u32),
    #[error("string is not UTF-8 or not NUL-terminated")]
    Str,
    #[error("invalid object path {0:?}")]
    Path(String),
    #[error("padding byte is not zero")]
    Padding,
    #[error("array of {0} bytes overruns its container")]
    ArrayLength(u32),
    #[error("value runs past the end of the message")]
    Overrun,
    #[error("the body is {body} bytes but its values take {used}")]
    BodyLength { body: usize, used: usize },
    #[error("a body without a signature header field")]
    BodyWithoutSignature,
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded message would be {0} bytes; at most {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("a value does not match its declared type: {0}")]
    Mismatch(String),
    #[error("string contains a NUL byte")]
    Nul,
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Type {
    /// The alignment of this type's values.
    pub fn alignment(&self) -> usize {
        match self {
            Type::Byte | Type::Sig | Type::Variant => 1,
            Type::Int16 | Type::Uint16 => 2,
            Type::Bool
            | Type::Int32
            | Type::Uint32
            | Type::Str
            | Type::Path
            | Type::Fd
            | Type::Array(_)
            | Type::Dict(..) => 4,
            Type::Int64 | Type::Uint64 | Type::Double | Type::Struct(_) => 8,
        }
    }

    /// Appends the signature of this type.
    pub fn write_signature(&self, out: &mut String) {
        match self {
            Type::Byte => out.push('y'),
            Type::Bool => out.push('b'),
            Type::Int16 => out.push('n'),
            Type::Uint16 => out.push('q'),
            Type::Int32 => out.push('i'),
            Type::Uint32 => out.push('u'),
            Type::Int64 => out.push('x'),
            Type::Uint64 => out.push('t'),
            Type::Double => out.push('d'),
            Type::Str => out.push('s'),
            Type::Path => out.push('o'),
            Type::Sig => out.push('g'),
            Type::Fd => out.push('h'),
            Type::Variant => out.push('v'),
            Type::Array(elem) => {
                out.push('a');
                elem.write_signature(out);
            }
            Type::Struct(fields) => {
                out.push('(');
                for f in fields {
                    f.write_signature(out);
                }
                out.push(')');
            }
            Type::Dict(k, v) => {
                out.push_str("a{");
                k.write_signature(out);
                v.write_signature(out);
                out.push('}');
            }
        }
    }

    fn is_basic(&self) -> bool {
        !matches!(
            self,
            Type::Variant | Type::Array(_) | Type::Struct(_) | Type::Dict(..)
        )
    }
}

/// Parses a signature (zero or more complete types).
pub fn parse_signature(sig: &str) -> Result<Vec<Type>, Malformed> {
    let bad = || Malformed::Signature(sig.chars().take(MAX_SIGNATURE).collect());
    if sig.len() > MAX_SIGNATURE {
        return Err(bad());
    }
    let bytes = sig.as_bytes();
    let mut pos = 0;
    let mut types = Vec::new();
    while pos < bytes.len() {
        types.push(parse_one(bytes, &mut pos, 0).ok_or_else(bad)?);
    }
    Ok(types)
}

fn parse_one(b: &[u8], pos: &mut usize, depth: usize) -> Option<Type> {
    if depth > MAX_DEPTH {
        return None;
    }
    let c = *b.get(*pos)?;
    *pos += 1;
    Some(match c {
        b'y' => Type::Byte,
        b'b' => Type::Bool,
        b'n' => Type::Int16,
        b'q' => Type::Uint16,
        b'i' => Type::Int32,
        b'u' => Type::Uint32,
        b'x' => Type::Int64,
        b't' => Type::Uint64,
        b'd' => Type::Double,
        b's' => Type::Str,
        b'o' => Type::Path,
        b'g' => Type::Sig,
        b'h' => Type::Fd,
        b'v' => Type::Variant,
        b'a' => {
            if b.get(*pos) == Some(&b'{') {
                *pos += 1;
                let k = parse_one(b, pos, depth + 1)?;
                if !k.is_basic() {
                    return None;
                }
                let v = parse_one(b, pos, depth + 1)?;
                if b.get(*pos) != Some(&b'}') {
                    return None;
                }
                *pos += 1;
                Type::Dict(Box::new(k), Box::new(v))
            } else {
                Type::Array(Box::new(parse_one(b, pos, depth + 1)?))
            }
        }
        b'(' => {
            let mut fields = Vec::new();
            while b.get(*pos) != Some(&b')') {
                fields.push(parse_one(b, pos, depth + 1)?);
            }
            *pos += 1;
            if fields.is_empty() {
                return None;
            }
            Type::Struct(fields)
        }
        _ => return None,
    })
}

impl Value {
    /// The type of this value.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Byte(_) => Type::Byte,
            Value::Bool(_) => Type::Bool,
            Value::Int16(_) => Type::Int16,
            Value::Uint16(_) => Type::Uint16,
            Value::Int32(_) => Type::Int32,
            Value::Uint32(_) => Type::Uint32,
            Value::Int64(_) => Type::Int64,
            Value::Uint64(_) => Type::Uint64,
            Value::Double(_) => Type::Double,
            Value::Str(_) => Type::Str,
            Value::Path(_) => Type::Path,
            Value::Sig(_) => Type::Sig,
            Value::Fd(_) => Type::Fd,
            Value::Variant(_) => Type::Variant,
            Value::Array(elem, _) => Type::Array(Box::new(elem.clone())),
            Value::Struct(fields) => Type::Struct(fields.iter().map(Value::type_of).collect()),
            Value::Dict(k, v, _) => Type::Dict(Box::new(k.clone()), Box::new(v.clone())),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Sig(s) => Some(s),
            _ => None,
        }
    }
}

/// The signature of a list of values.
pub fn signature_of(values: &[Value]) -> String {
    let mut sig = String::new();
    for v in values {
        v.type_of().write_signature(&mut sig);
    }
    sig
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
    /// Descriptors the message announces (bounds `h` indices).
    fds: u32,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed::Overrun)?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed::Overrun)?;
        self.pos = end;
        Ok(s)
    }

    fn pad(&mut self, to: usize) -> Result<(), Malformed> {
        let n = align(self.pos, to) - self.pos;
        if self.take(n)?.iter().any(|&b| b != 0) {
            return Err(Malformed::Padding);
        }
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        self.pad(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        if self.big {
            a.reverse();
        }
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    fn string(&mut self, len: usize) -> Result<String, Malformed> {
        let bytes = self.take(len)?;
        if self.take(1)? != [0] || bytes.contains(&0) {
            return Err(Malformed::Str);
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| Malformed::Str)
    }

    fn value(&mut self, ty: &Type, depth: usize) -> Result<Value, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed::TooDeep);
        }
        Ok(match ty {
            Type::Byte => Value::Byte(self.take(1)?[0]),
            Type::Bool => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                n => return Err(Malformed::Bool(n)),
            },
            Type::Int16 => Value::Int16(i16::from_le_bytes(self.fixed()?)),
            Type::Uint16 => Value::Uint16(u16::from_le_bytes(self.fixed()?)),
            Type::Int32 => Value::Int32(i32::from_le_bytes(self.fixed()?)),
            Type::Uint32 => Value::Uint32(self.u32()?),
            Type::Int64 => Value::Int64(i64::from_le_bytes(self.fixed()?)),
            Type::Uint64 => Value::Uint64(u64::from_le_bytes(self.fixed()?)),
            Type::Double => Value::Double(f64::from_le_bytes(self.fixed()?)),
            Type::Str => {
                let len = self.u32()? as usize;
                Value::Str(self.string(len)?)
            }
            Type::Path => {
                let len = self.u32()? as usize;
                let path = self.string(len)?;
                if !valid_path(&path) {
                    return Err(Malformed::Path(path));
                }
                Value::Path(path)
            }
            Type::Sig => {
                let len = self.take(1)?[0] as usize;
                let sig = self.string(len)?;
                parse_signature(&sig)?;
                Value::Sig(sig)
            }
            Type::Fd => {
                let index = self.u32()?;
                if index >= self.fds {
                    return Err(Malformed::FdIndex {
                        index,
                        count: self.fds,
                    });
                }
                Value::Fd(index)
            }
            Type::Variant => {
                let len = self.take(1)?[0] as usize;
                let sig = self.string(len)?;
                let types = parse_signature(&sig)?;
                let [inner] = types.as_slice() else {
                    return Err(Malformed::Signature(sig));
                };
                Value::Variant(Box::new(self.value(inner, depth + 1)?))
            }
            Type::Array(elem) => {
                let items = self.array(elem.alignment(), depth, |r| r.value(elem, depth + 1))?;
                Value::Array((**elem).clone(), items)
            }
            Type::Dict(k, v) => {
                let items = self.array(8, depth, |r| {
                    r.pad(8)?;
                    let key = r.value(k, depth + 2)?;
                    let val = r.value(v, depth + 2)?;
                    Ok((key, val))
                })?;
                Value::Dict((**k).clone(), (**v).clone(), items)
            }
            Type::Struct(fields) => {
                self.pad(8)?;
                let mut values = Vec::with_capacity(fields.len());
                for f in fields {
                    values.push(self.value(f, depth + 1)?);
                }
                Value::Struct(values)
            }
        })
    }

    /// An array: its byte length, padding to the element alignment, then
    /// elements until exactly that many bytes are used.
    fn array<T>(
        &mut self,
        elem_align: usize,
        depth: usize,
        mut item: impl FnMut(&mut Reader<'a>) -> Result<T, Malformed>,
    ) -> Result<Vec<T>, Malformed> {
        if depth + 1 > MAX_DEPTH {
            return Err(Malformed::TooDeep);
        }
        let len = self.u32()?;
        self.pad(elem_align)?;
        let end = self
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Malformed::ArrayLength(len))?;
        let mut items = Vec::new();
        while self.pos < end {
            items.push(item(self)?);
        }
        if self.pos != end {
            return Err(Malformed::ArrayLength(len));
        }
        Ok(items)
    }
}

/// `/` or `/a/b_c/D0`: elements of `[A-Za-z0-9_]`, no empty ones, no
/// trailing slash.
pub fn valid_path(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The fixed part of every header: 12 bytes, then the field array's length.
const FIXED_HEADER: usize = 16;

/// The total length of the message at the start of `buf`, from its first
/// 16 bytes; checks the fixed header and the size limit.
pub fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let Some(fixed) = buf.get(..FIXED_HEADER) else {
        return Err(DecodeError::Incomplete {
            needed: FIXED_HEADER,
        });
    };
    let big = match fixed[0] {
        b'l' => false,
        b'B' => true,
        other => return Err(Malformed::Endian(other).into()),
    };
    if !(1..=4).contains(&fixed[1]) {
        return Err(Malformed::Kind(fixed[1]).into());
    }
    if fixed[3] != 1 {
        return Err(Malformed::Version(fixed[3]).into());
    }
    let word = |at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&fixed[at..at + 4]);
        if big {
            a.reverse();
        }
        u32::from_le_bytes(a) as u64
    };
    let body = word(4);
    let fields = word(12);
    let total = align((FIXED_HEADER as u64 + fields) as usize, 8) as u64 + body;
    if total > MAX_MESSAGE as u64 {
        return Err(Malformed::TooLarge(total).into());
    }
    Ok(total as usize)
}

fn field_str(code: u8, v: Value, want: Type) -> Result<String, Malformed> {
    let found = v.type_of();
    match v {
        Value::Str(s) | Value::Path(s) | Value::Sig(s) if found == want => Ok(s),
        _ => {
            let mut sig = String::new();
            found.write_signature(&mut sig);
            Err(Malformed::FieldType {
                code,
                found: sig,
                wanted: match want {
                    Type::Path => "o",
                    Type::Sig => "g",
                    _ => "s",
                },
            })
        }
    }
}

fn field_u32(code: u8, v: Value) -> Result<u32, Malformed> {
    match v {
        Value::Uint32(n) => Ok(n),
        other => {
            let mut sig = String::new();
            other.type_of().write_signature(&mut sig);
            Err(Malformed::FieldType {
                code,
                found: sig,
                wanted: "u",
            })
        }
    }
}

/// Decodes the message at the start of `buf`; returns it and how many
/// bytes it took. Descriptors are counted (`unix_fds`) but not attached:
/// the caller owns those it received.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    let total = frame_len(buf)?;
    let Some(frame) = buf.get(..total) else {
        return Err(DecodeError::Incomplete { needed: total });
    };
    let big = frame[0] == b'B';
    let kind = match frame[1] {
        1 => Kind::MethodCall,
        2 => Kind::MethodReturn,
        3 => Kind::Error,
        _ => Kind::Signal,
    };
    let mut r = Reader {
        buf: frame,
        pos: 8,
        big,
        fds: 0,
    };
    let serial = r.u32()?;
    if serial == 0 {
        return Err(Malformed::ZeroSerial.into());
    }
    let mut msg = Message {
        kind,
        flags: frame[2],
        serial,
        path: None,
        interface: None,
        member: None,
        error_name: None,
        reply_serial: None,
        destination: None,
        sender: None,
        unix_fds: 0,
        body: Vec::new(),
    };
    let mut signature = String::new();
    let mut count = 0;
    let fields = r.array(8, 0, |r| {
        r.pad(8)?;
        let code = r.take(1)?[0];
        let value = r.value(&Type::Variant, 1)?;
        Ok((code, value))
    })?;
    for (code, value) in fields {
        count += 1;
        if count > MAX_HEADER_FIELDS {
            return Err(Malformed::TooManyFields.into());
        }
        let Value::Variant(inner) = value else {
            continue;
        };
        let inner = *inner;
        match code {
            1 => msg.path = Some(field_str(code, inner, Type::Path)?),
            2 => msg.interface = Some(field_str(code, inner, Type::Str)?),
            3 => msg.member = Some(field_str(code, inner, Type::Str)?),
            4 => msg.error_name = Some(field_str(code, inner, Type::Str)?),
            5 => msg.reply_serial = Some(field_u32(code, inner)?),
            6 => msg.destination = Some(field_str(code, inner, Type::Str)?),
            7 => msg.sender = Some(field_str(code, inner, Type::Str)?),
            8 => signature = field_str(code, inner, Type::Sig)?,
            9 => {
                let n = field_u32(code, inner)?;
                if n > MAX_FDS {
                    return Err(Malformed::TooManyFds(n).into());
                }
                msg.unix_fds = n;
            }
            // Unknown fields are ignored, as the specification says.
            _ => {}
        }
    }
    let missing = match kind {
        Kind::MethodCall if msg.path.is_none() => Some("PATH"),
        Kind::MethodCall if msg.member.is_none() => Some("MEMBER"),
        Kind::Signal if msg.path.is_none() => Some("PATH"),
        Kind::Signal if msg.interface.is_none() => Some("INTERFACE"),
        Kind::Signal if msg.member.is_none() => Some("MEMBER"),
        Kind::Error if msg.error_name.is_none() => Some("ERROR_NAME"),
        Kind::Error | Kind::MethodReturn if msg.reply_serial.is_none() => Some("REPLY_SERIAL"),
        _ => None,
    };
    if let Some(field) = missing {
        return Err(Malformed::MissingField(field).into());
    }
    r.pad(8)?;
    let body_start = r.pos;
    let body_len = total - body_start;
    if signature.is_empty() && body_len > 0 {
        return Err(Malformed::BodyWithoutSignature.into());
    }
    r.fds = msg.unix_fds;
    for ty in parse_signature(&signature)? {
        msg.body.push(r.value(&ty, 0)?);
    }
    if r.pos != total {
        return Err(Malformed::BodyLength {
            body: body_len,
            used: r.pos - body_start,
        }
        .into());
    }
    Ok((msg, total))
}

// ---------------------------------------------------------------- encoding

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn pad(&mut self, to: usize) {
        let len = align(self.out.len(), to);
        self.out.resize(len, 0);
    }

    /// A fixed-size value, aligned to its own size.
    fn fixed(&mut self, bytes: &[u8]) {
        self.pad(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    fn u32(&mut self, n: u32) {
        self.fixed(&n.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.contains('\0') {
            return Err(EncodeError::Nul);
        }
        self.u32(s.len() as u32);
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
        Ok(())
    }

    fn sig(&mut self, s: &str) -> Result<(), EncodeError> {
        if s.len() > MAX_SIGNATURE {
            return Err(EncodeError::Mismatch(format!(
                "signature of {} bytes",
                s.len()
            )));
        }
        self.out.push(s.len() as u8);
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
        Ok(())
    }

    fn value(&mut self, v: &Value) -> Result<(), EncodeError> {
        if self.out.len() > MAX_MESSAGE {
            return Err(EncodeError::TooLarge(self.out.len()));
        }
        match v {
            Value::Byte(b) => self.out.push(*b),
            Value::Bool(b) => self.u32(u32::from(*b)),
            Value::Int16(n) => self.fixed(&n.to_le_bytes()),
            Value::Uint16(n) => self.fixed(&n.to_le_bytes()),
            Value::Int32(n) => self.fixed(&n.to_le_bytes()),
            Value::Uint32(n) | Value::Fd(n) => self.u32(*n),
            Value::Int64(n) => self.fixed(&n.to_le_bytes()),
            Value::Uint64(n) => self.fixed(&n.to_le_bytes()),
            Value::Double(n) => self.fixed(&n.to_le_bytes()),
            Value::Str(s) => self.string(s)?,
            Value::Path(s) => {
                if !valid_path(s) {
                    return Err(EncodeError::Mismatch(format!("object path {s:?}")));
                }
                self.string(s)?
            }
            Value::Sig(s) => self.sig(s)?,
            Value::Variant(inner) => {
                let mut sig = String::new();
                inner.type_of().write_signature(&mut sig);
                self.sig(&sig)?;
                self.value(inner)?;
            }
            Value::Array(elem, items) => {
                self.array(elem.alignment(), |w| {
                    for item in items {
                        if item.type_of() != *elem {
                            return Err(EncodeError::Mismatch("array element".into()));
                        }
                        w.value(item)?;
                    }
                    Ok(())
                })?;
            }
            Value::Dict(k, t, items) => {
                self.array(8, |w| {
                    for (key, val) in items {
                        if key.type_of() != *k || val.type_of() != *t {
                            return Err(EncodeError::Mismatch("dict entry".into()));
                        }
                        w.pad(8);
                        w.value(key)?;
                        w.value(val)?;
                    }
                    Ok(())
                })?;
            }
            Value::Struct(fields) => {
                self.pad(8);
                for f in fields {
                    self.value(f)?;
                }
            }
        }
        Ok(())
    }

    fn array(
        &mut self,
        elem_align: usize,
        items: impl FnOnce(&mut Writer) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        self.u32(0);
        let len_at = self.out.len() - 4;
        self.pad(elem_align);
        let start = self.out.len();
        items(self)?;
        let len = (self.out.len() - start) as u32;
        self.out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

/// Encodes `msg` (little-endian) with its own serial.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut body = Writer { out: Vec::new() };
    for v in &msg.body {
        body.value(v)?;
    }
    let signature = signature_of(&msg.body);
    let mut fields: Vec<Value> = Vec::new();
    let mut field = |code: u8, v: Value| {
        fields.push(Value::Struct(vec![
            Value::Byte(code),
            Value::Variant(Box::new(v)),
        ]))
    };
    if let Some(p) = &msg.path {
        field(1, Value::Path(p.clone()));
    }
    for (code, s) in [(2, &msg.interface), (3, &msg.member), (4, &msg.error_name)] {
        if let Some(s) = s {
            field(code, Value::Str(s.clone()));
        }
    }
    if let Some(n) = msg.reply_serial {
        field(5, Value::Uint32(n));
    }
    for (code, s) in [(6, &msg.destination), (7, &msg.sender)] {
        if let Some(s) = s {
            field(code, Value::Str(s.clone()));
        }
    }
    if !signature.is_empty() {
        field(8, Value::Sig(signature));
    }
    if msg.unix_fds > 0 {
        field(9, Value::Uint32(msg.unix_fds));
    }
    let mut w = Writer { out: Vec::new() };
    w.out
        .extend_from_slice(&[b'l', msg.kind as u8, msg.flags, 1]);
    w.out
        .extend_from_slice(&(body.out.len() as u32).to_le_bytes());
    w.out.extend_from_slice(&msg.serial.to_le_bytes());
    let field_type = Type::Struct(vec![Type::Byte, Type::Variant]);
    w.value(&Value::Array(field_type, fields))?;
    w.pad(8);
    w.out.extend_from_slice(&body.out);
    if w.out.len() > MAX_MESSAGE {
        return Err(EncodeError::TooLarge(w.out.len()));
    }
    Ok(w.out)
}

impl Message {
    fn new(kind: Kind, serial: u32) -> Message {
        Message {
            kind,
            flags: 0,
            serial,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            unix_fds: 0,
            body: Vec::new(),
        }
    }

    /// A method call (what clients send; used by tests and the fuzzer's
    /// seeds).
    pub fn method_call(serial: u32, path: &str, interface: &str, member: &str) -> Message {
        Message {
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            ..Message::new(Kind::MethodCall, serial)
        }
    }

    /// The successful reply to `call`.
    pub fn method_return(serial: u32, call: &Message, body: Vec<Value>) -> Message {
        Message {
            reply_serial: Some(call.serial),
            destination: call.reply_destination(),
            body,
            ..Message::new(Kind::MethodReturn, serial)
        }
    }

    /// An error reply to `call`, with a human-readable message.
    pub fn error(serial: u32, call: &Message, name: &str, text: &str) -> Message {
        Message {
            reply_serial: Some(call.serial),
            destination: call.reply_destination(),
            error_name: Some(name.into()),
            body: vec![Value::Str(text.into())],
            ..Message::new(Kind::Error, serial)
        }
    }

    /// A signal.
    pub fn signal(
        serial: u32,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Message {
        Message {
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            body,
            ..Message::new(Kind::Signal, serial)
        }
    }

    /// Where a reply to this message goes: its sender, if that can be a
    /// bus name at all (at most [`MAX_BUS_NAME`] bytes). A longer one is
    /// not echoed, so a reply is never larger than the call made it.
    fn reply_destination(&self) -> Option<String> {
        self.sender.clone().filter(|s| s.len() <= MAX_BUS_NAME)
    }

    pub fn with_sender(mut self, sender: &str) -> Message {
        self.sender = Some(sender.into());
        self
    }

    pub fn wants_reply(&self) -> bool {
        self.kind == Kind::MethodCall && self.flags & NO_REPLY_EXPECTED == 0
    }

    /// The body's signature.
    pub fn signature(&self) -> String {
        signature_of(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The godbus kubelet's `Hello`, as libdbus and godbus marshal it
    /// (little-endian, serial 1).
    const HELLO_LE: &[u8] = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x6e\x00\x00\x00\
\x01\x01o\x00\x15\x00\x00\x00/org/freedesktop/DBus\x00\x00\x00\
\x06\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00\
\x02\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00\
\x03\x01s\x00\x05\x00\x00\x00Hello\x00\x00\x00";

    #[test]
    fn decodes_a_golden_hello() {
        let (msg, used) = decode(HELLO_LE).expect("hello");
        assert_eq!(used, HELLO_LE.len());
        assert_eq!(msg.kind, Kind::MethodCall);
        assert_eq!(msg.serial, 1);
        assert_eq!(msg.path.as_deref(), Some("/org/freedesktop/DBus"));
        assert_eq!(msg.destination.as_deref(), Some("org.freedesktop.DBus"));
        assert_eq!(msg.interface.as_deref(), Some("org.freedesktop.DBus"));
        assert_eq!(msg.member.as_deref(), Some("Hello"));
        assert!(msg.body.is_empty());
    }

    #[test]
    fn every_prefix_is_incomplete_never_malformed() {
        for n in 0..HELLO_LE.len() {
            match decode(&HELLO_LE[..n]) {
                Err(DecodeError::Incomplete { needed }) => assert!(needed > n, "{n}"),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
    }

    fn get_call() -> Message {
        let mut call = Message::method_call(
            7,
            "/org/freedesktop/login1",
            "org.freedesktop.DBus.Properties",
            "Get",
        );
        call.destination = Some("org.freedesktop.login1".into());
        call.body = vec![
            Value::Str("org.freedesktop.login1.Manager".into()),
            Value::Str("InhibitDelayMaxUSec".into()),
        ];
        call
    }

    #[test]
    fn round_trips_calls_replies_errors_and_signals() {
        let call = get_call();
        let reply = Message::method_return(
            3,
            &call,
            vec![Value::Variant(Box::new(Value::Uint64(35_000_000)))],
        )
        .with_sender(":1.0");
        let error = Message::error(4, &call, "org.freedesktop.DBus.Error.UnknownMethod", "no");
        let signal = Message::signal(
            5,
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "PrepareForShutdown",
            vec![Value::Bool(true)],
        );
        let mut fd_reply = Message::method_return(6, &call, vec![Value::Fd(0)]);
        fd_reply.unix_fds = 1;
        let all = Message::method_return(
            8,
            &call,
            vec![Value::Dict(
                Type::Str,
                Type::Variant,
                vec![
                    (
                        Value::Str("InhibitDelayMaxUSec".into()),
                        Value::Variant(Box::new(Value::Uint64(5))),
                    ),
                    (
                        Value::Str("DelayInhibited".into()),
                        Value::Variant(Box::new(Value::Str("shutdown".into()))),
                    ),
                    (
                        Value::Str("PreparingForShutdown".into()),
                        Value::Variant(Box::new(Value::Bool(false))),
                    ),
                ],
            )],
        );
        let kill = {
            let mut m = Message::method_call(
                9,
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "KillUnit",
            );
            m.body = vec![
                Value::Str("systemd-logind.service".into()),
                Value::Str("all".into()),
                Value::Int32(1),
            ];
            m
        };
        let mixed = {
            let mut m = Message::method_call(10, "/", "a.b", "C");
            m.body = vec![
                Value::Byte(1),
                Value::Int16(-2),
                Value::Uint16(3),
                Value::Int64(-4),
                Value::Double(0.5),
                Value::Sig("a{sv}".into()),
                Value::Array(Type::Path, vec![Value::Path("/a".into())]),
                Value::Array(Type::Uint64, vec![]),
                Value::Struct(vec![Value::Byte(1), Value::Uint64(2)]),
            ];
            m
        };
        for msg in [call, reply, error, signal, fd_reply, all, kill, mixed] {
            let bytes = encode(&msg).expect("encode");
            let (back, used) = decode(&bytes).expect("decode");
            assert_eq!(used, bytes.len());
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn encodes_the_signal_the_kubelet_waits_for_byte_for_byte() {
        let signal = Message::signal(
            2,
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "PrepareForShutdown",
            vec![Value::Bool(true)],
        );
        let golden: &[u8] = b"l\x04\x00\x01\x04\x00\x00\x00\x02\x00\x00\x00\x6f\x00\x00\x00\
\x01\x01o\x00\x17\x00\x00\x00/org/freedesktop/login1\x00\
\x02\x01s\x00\x1e\x00\x00\x00org.freedesktop.login1.Manager\x00\x00\
\x03\x01s\x00\x12\x00\x00\x00PrepareForShutdown\x00\x00\x00\x00\x00\x00\
\x08\x01g\x00\x01b\x00\x00\
\x01\x00\x00\x00";
        assert_eq!(encode(&signal).expect("encode"), golden);
    }

    /// The same Get as libdbus marshals it on a big-endian machine.
    #[test]
    fn decodes_big_endian() {
        let le = encode(&get_call()).expect("encode");
        let mut be = Vec::new();
        be.extend_from_slice(b"B\x01\x00\x01");
        let word = |at: usize| u32::from_le_bytes([le[at], le[at + 1], le[at + 2], le[at + 3]]);
        for at in [4, 8, 12] {
            be.extend_from_slice(&word(at).to_be_bytes());
        }
        // The rest: swap every u32 length in place. Walk it by hand: the
        // field array holds strings and a signature; the body two strings.
        let mut rest = le[16..].to_vec();
        let mut swap = |at: usize| rest[at..at + 4].reverse();
        // Fields: path(1) iface(2) member(3) dest(6) sig(8), each
        // code, sig len 1, type char, NUL, then a u32 length for strings.
        let mut pos = 0;
        let fields_len = word(12) as usize;
        while pos < fields_len {
            pos = align(pos, 8);
            let code = le[16 + pos];
            pos += 4;
            if code == 8 {
                let n = le[16 + pos] as usize;
                pos += 1 + n + 1;
            } else {
                let n = word(16 + pos) as usize;
                swap(pos);
                pos += 4 + n + 1;
            }
        }
        let mut pos = align(fields_len, 8);
        for _ in 0..2 {
            let n = word(16 + pos) as usize;
            swap(pos);
            pos = align(pos + 4 + n + 1, 4);
        }
        be.extend_from_slice(&rest);
        let (msg, _) = decode(&be).expect("big-endian");
        assert_eq!(msg, get_call());
    }

    fn malformed(bytes: &[u8]) -> Malformed {
        match decode(bytes) {
            Err(DecodeError::Malformed(m)) => m,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn rejects_each_kind_of_malformed_input() {
        let good = encode(&get_call()).expect("encode");
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            b
        };
        assert_eq!(malformed(&with(0, b'x')), Malformed::Endian(b'x'));
        assert_eq!(malformed(&with(1, 9)), Malformed::Kind(9));
        assert_eq!(malformed(&with(3, 2)), Malformed::Version(2));
        // A body length far past the limit.
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(malformed(&huge), Malformed::TooLarge(_)));
        let mut zero = good.clone();
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(malformed(&zero), Malformed::ZeroSerial);
        // A method call without a member.
        let mut call = get_call();
        call.member = None;
        let bytes = encode(&call).expect("encode");
        assert_eq!(malformed(&bytes), Malformed::MissingField("MEMBER"));
        // A bool that is 2.
        let mut sig = Message::signal(1, "/a", "a.b", "C", vec![Value::Bool(true)]);
        let mut bytes = encode(&sig).expect("encode");
        let last = bytes.len() - 4;
        bytes[last] = 2;
        assert_eq!(malformed(&bytes), Malformed::Bool(2));
        // A string without its NUL.
        sig.body = vec![Value::Str("ab".into())];
        let mut bytes = encode(&sig).expect("encode");
        let nul = bytes.len() - 1;
        bytes[nul] = b'x';
        assert_eq!(malformed(&bytes), Malformed::Str);
        // A descriptor index without descriptors.
        sig.body = vec![Value::Fd(0)];
        let bytes = encode(&sig).expect("encode");
        assert_eq!(malformed(&bytes), Malformed::FdIndex { index: 0, count: 0 });
        // Too many descriptors announced.
        sig.unix_fds = MAX_FDS + 1;
        let bytes = encode(&sig).expect("encode");
        assert_eq!(malformed(&bytes), Malformed::TooManyFds(MAX_FDS + 1));
        // An invalid path.
        let mut bad_path = get_call();
        bad_path.path = Some("/a//b".into());
        assert!(encode(&bad_path).is_err());
    }

    #[test]
    fn bounds_nesting_and_signatures() {
        assert!(parse_signature(&"a".repeat(40).chars().chain(['y']).collect::<String>()).is_err());
        assert!(parse_signature("a{vs}").is_err(), "dict keys are basic");
        assert!(parse_signature("()").is_err());
        assert!(parse_signature("(y").is_err());
        assert!(parse_signature("a").is_err());
        assert_eq!(
            parse_signature("sa{sv}h").expect("sig"),
            vec![
                Type::Str,
                Type::Dict(Box::new(Type::Str), Box::new(Type::Variant)),
                Type::Fd
            ]
        );
        // Variants nested in variants beyond the limit.
        let mut v = Value::Byte(0);
        for _ in 0..(MAX_DEPTH + 2) {
            v = Value::Variant(Box::new(v));
        }
        let sig = Message::signal(1, "/a", "a.b", "C", vec![v]);
        let bytes = encode(&sig).expect("encode");
        assert_eq!(malformed(&bytes), Malformed::TooDeep);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap stand-in for the fuzzer: every byte flip of real
        // messages decodes or fails cleanly.
        let good = encode(&get_call()).expect("encode");
        for at in 0..good.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[at] = byte;
                let _ = decode(&b);
            }
        }
    }
}
