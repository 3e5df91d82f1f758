//! The score expression language of a service type (`score_expr`).
//!
//! A type's score is computed from the tags of a service by an expression such as
//! `root(3, ((num stat.cpu) * (num stat.io) * (num stat.space)))`. Expressions are parsed once,
//! when the configuration is loaded ([`Expr::parse`], errors carry the byte position), and
//! evaluated on every refresh without allocating ([`Expr::eval`]).
//!
//! # Grammar
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := eq ("&&" eq)*
//! eq      := rel (("==" | "!=") rel)*
//! rel     := add (("<" | "<=" | ">" | ">=") add)*
//! add     := mul (("+" | "-") mul)*
//! mul     := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | "!" unary | "num" unary | primary
//! primary := INT | STRING | KIND "." NAME | "(" expr ")"
//!          | "root" "(" expr "," expr ")" | "min" "(" expr ("," expr)* ")" | "max" "(" …same… ")"
//! ```
//!
//! `INT` is a decimal integer literal (`0` or `[1-9][0-9]*`; a negative number is unary minus);
//! `STRING` is `"…"` with `\"` and `\\` escapes; `KIND` is `tag` or `stat` and `NAME` is
//! `[A-Za-z0-9_]+` (dots allowed inside, as in `tag.a.b`). `num`, `root`, `min`, `max` are
//! keywords; `num` binds tighter than any binary operator, so `num stat.cpu * num stat.io` is
//! `(num stat.cpu) * (num stat.io)`.
//!
//! # Semantics (those of the OpenIO conscience, `cluster/module/expr.*`, except comparisons)
//!
//! * Arithmetic is on `f64`. The registry floors the result and clamps it to 0..=100.
//! * **UNDEF** ([`Expr::eval`] returns `None`) propagates through every operator. The registry
//!   then keeps the service's previous score. It comes from: a missing tag, `num` of something
//!   that is not a number, `root(0, x)`.
//! * `num X` reads a string or accessor as a number (`strtod`-like, surrounding blanks allowed);
//!   a bool tag reads as `1`/`0`, so `num tag.up` works. Applied to a number it is that number.
//! * A string literal or an accessor used as a number **without** `num` is the length of its
//!   text (the original quirk, kept): `stat.cpu` with value `87` is `2`, and `tag.up` is `1`
//!   whether true or false — write `num tag.up`.
//! * `root(n, x)` is `x^(1/n)`; `n == 0` is UNDEF, `x == 0` is `0`.
//! * `a / 0` is `0`; `a % b` is `0` when `a < 0` or `b <= 0` (no error, as in the original).
//! * `min(…)` / `max(…)` take one or more arguments.
//! * Comparisons `==`, `!=`, `<`, `<=`, `>`, `>=` mean what they say and yield `1` or `0`. Two
//!   text operands (string literals or string tags) compare as text, byte-wise; a text operand
//!   against a number tag compares both read with `num` (UNDEF if one is not a number); anything
//!   else compares numerically (text → its length, as above).
//! * `&&`, `||`, `!` treat non-zero as true and yield `1`/`0`; no short-circuit (UNDEF on either
//!   side is UNDEF).
//!
//! **The original's comparisons are broken** and heartsink does not copy them: its lexer maps
//! the tokens crosswise (`!=`→EQ, `==`→NEQ, `<=`→LT, `>=`→GT, `<`→LE, `>`→GE), its `<N>`
//! operator is a three-way compare, and the logical operators are unreachable from the grammar.
//! A configuration written against the original's behaviour (e.g. `==` meaning "different")
//! must be rewritten.
#![forbid(unsafe_code)]

use std::fmt;

/// Longest accepted expression, in bytes.
pub const MAX_LEN: usize = 4096;

/// Deepest accepted syntax tree (evaluation recurses this deep).
pub const MAX_DEPTH: u32 = 128;

/// A borrowed tag value, as handed to [`Expr::eval`] by its lookup function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TagValueRef<'a> {
    /// An integer tag.
    Int(i64),
    /// A floating-point tag.
    Float(f64),
    /// A boolean tag (reads as `1`/`0`).
    Bool(bool),
    /// A string tag.
    Str(&'a str),
}

impl TagValueRef<'_> {
    /// The value read as a number (`num`): `None` when it is a string that is not a number.
    pub fn to_num(self) -> Option<f64> {
        match self {
            TagValueRef::Int(i) => Some(i as f64),
            TagValueRef::Float(f) => Some(f),
            TagValueRef::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            TagValueRef::Str(s) => s.trim().parse::<f64>().ok(),
        }
    }

    /// The length in bytes of the value's text (`87` → 2, `true` → 1 as it reads `1`).
    pub fn text_len(self) -> usize {
        use fmt::Write as _;
        let mut n = LenCounter(0);
        // Writing into a counter cannot fail.
        match self {
            TagValueRef::Int(i) => {
                let _ = write!(n, "{i}");
            }
            TagValueRef::Float(f) => {
                let _ = write!(n, "{f}");
            }
            TagValueRef::Bool(_) => n.0 = 1,
            TagValueRef::Str(s) => n.0 = s.len(),
        }
        n.0
    }
}

/// Counts the bytes written through `fmt::Write` (text length without allocating).
struct LenCounter(usize);

impl fmt::Write for LenCounter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Why an expression was rejected. Carries the byte offset in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset of the offending token in the expression.
    pub pos: usize,
    /// What is wrong there.
    pub kind: ExprErrorKind,
}

/// The kinds of [`ExprError`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExprErrorKind {
    /// The expression is empty or blank.
    Empty,
    /// Longer than [`MAX_LEN`] bytes.
    TooLong,
    /// Nested deeper than [`MAX_DEPTH`] (a very long operator chain or many parentheses).
    TooDeep,
    /// A character that starts no token.
    UnexpectedChar(char),
    /// A `"` without its closing quote.
    UnterminatedString,
    /// An integer literal that does not fit `i64`, or has a leading zero.
    BadInteger,
    /// A bare word that is neither a keyword nor `tag.NAME` / `stat.NAME`.
    UnknownIdentifier(String),
    /// `KIND.NAME` with a kind other than `tag` or `stat` (no such tags are ever kept).
    UnknownAccessorKind(String),
    /// A token where something else was required.
    Expected {
        /// What the parser wanted.
        expected: &'static str,
        /// What it found.
        found: String,
    },
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprErrorKind::Empty => write!(f, "empty expression"),
            ExprErrorKind::TooLong => write!(f, "expression longer than {MAX_LEN} bytes"),
            ExprErrorKind::TooDeep => {
                write!(f, "expression nests deeper than {MAX_DEPTH} levels at byte {}", self.pos)
            }
            ExprErrorKind::UnexpectedChar(c) => write!(f, "unexpected character {c:?} at byte {}", self.pos),
            ExprErrorKind::UnterminatedString => write!(f, "unterminated string starting at byte {}", self.pos),
            ExprErrorKind::BadInteger => {
                write!(f, "bad integer literal at byte {} (decimal, no leading zero, fits i64)", self.pos)
            }
            ExprErrorKind::UnknownIdentifier(w) => write!(
                f,
                "unknown word {w:?} at byte {} (accessors are written tag.NAME or stat.NAME; keywords: num, root, min, max)",
                self.pos
            ),
            ExprErrorKind::UnknownAccessorKind(k) => {
                write!(f, "unknown accessor kind {k:?} at byte {} (only tag.* and stat.* exist)", self.pos)
            }
            ExprErrorKind::Expected { expected, found } => {
                write!(f, "expected {expected} at byte {}, found {found}", self.pos)
            }
        }
    }
}

impl std::error::Error for ExprError {}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// A node of the syntax tree.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Int(i64),
    Str(Box<str>),
    /// Full tag name, e.g. `stat.cpu`.
    Acc(Box<str>),
    Num(Box<Node>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Root(Box<Node>, Box<Node>),
    Min(Vec<Node>),
    Max(Vec<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}

/// A parsed score expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    src: String,
    root: Node,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.src)
    }
}

impl Expr {
    /// Parses `src`. Errors say what is wrong and at which byte.
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        if src.len() > MAX_LEN {
            return Err(ExprError { pos: MAX_LEN, kind: ExprErrorKind::TooLong });
        }
        let toks = lex(src)?;
        if toks.len() == 1 {
            return Err(ExprError { pos: 0, kind: ExprErrorKind::Empty });
        }
        let mut p = Parser { toks: &toks, i: 0 };
        let (root, _) = p.expr(0)?;
        let t = p.peek();
        if t.tok != Tok::End {
            return Err(ExprError {
                pos: t.pos,
                kind: ExprErrorKind::Expected { expected: "an operator or the end", found: t.tok.describe() },
            });
        }
        Ok(Expr { src: src.to_owned(), root })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Evaluates the expression. `lookup` maps a full tag name (`"stat.cpu"`, `"tag.up"`) to its
    /// value; `None` from it, and any other UNDEF case, makes the result `None`.
    pub fn eval<'t>(&self, lookup: impl Fn(&str) -> Option<TagValueRef<'t>>) -> Option<f64> {
        num_of(eval(&self.root, &lookup)?)
    }
}

/// An intermediate value: a number, or text (a string literal or a tag) not yet read.
#[derive(Clone, Copy)]
enum V<'s, 't> {
    Num(f64),
    Lit(&'s str),
    Tag(TagValueRef<'t>),
}

/// A value in numeric context: text counts as its length.
fn num_of(v: V<'_, '_>) -> Option<f64> {
    Some(match v {
        V::Num(x) => x,
        V::Lit(s) => s.len() as f64,
        V::Tag(t) => t.text_len() as f64,
    })
}

/// `num`: text read as a number.
fn parse_num(v: V<'_, '_>) -> Option<f64> {
    match v {
        V::Num(x) => Some(x),
        V::Lit(s) => TagValueRef::Str(s).to_num(),
        V::Tag(t) => t.to_num(),
    }
}

fn as_str<'a>(v: &V<'a, 'a>) -> Option<&'a str> {
    match *v {
        V::Lit(s) | V::Tag(TagValueRef::Str(s)) => Some(s),
        _ => None,
    }
}

fn truth(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn compare(op: BinOp, a: V<'_, '_>, b: V<'_, '_>) -> Option<f64> {
    let text = |v: &V<'_, '_>| !matches!(v, V::Num(_));
    let ord = if text(&a) && text(&b) {
        match (as_str(&a), as_str(&b)) {
            (Some(x), Some(y)) => x.cmp(y),
            _ => parse_num(a)?.partial_cmp(&parse_num(b)?)?,
        }
    } else {
        // NaN compares unordered: every comparison but `!=` is false.
        match num_of(a)?.partial_cmp(&num_of(b)?) {
            Some(o) => o,
            None => return Some(truth(op == BinOp::Ne)),
        }
    };
    use std::cmp::Ordering::*;
    Some(truth(match op {
        BinOp::Eq => ord == Equal,
        BinOp::Ne => ord != Equal,
        BinOp::Lt => ord == Less,
        BinOp::Le => ord != Greater,
        BinOp::Gt => ord == Greater,
        BinOp::Ge => ord != Less,
        _ => false,
    }))
}

fn eval<'s, 't>(n: &'s Node, lookup: &impl Fn(&str) -> Option<TagValueRef<'t>>) -> Option<V<'s, 't>> {
    Some(match n {
        Node::Int(i) => V::Num(*i as f64),
        Node::Str(s) => V::Lit(s),
        Node::Acc(name) => V::Tag(lookup(name)?),
        Node::Num(x) => V::Num(parse_num(eval(x, lookup)?)?),
        Node::Neg(x) => V::Num(-num_of(eval(x, lookup)?)?),
        Node::Not(x) => V::Num(truth(num_of(eval(x, lookup)?)? == 0.0)),
        Node::Root(n, x) => {
            let n = num_of(eval(n, lookup)?)?;
            let x = num_of(eval(x, lookup)?)?;
            if n == 0.0 {
                return None;
            }
            V::Num(if x == 0.0 { 0.0 } else { x.powf(1.0 / n) })
        }
        Node::Min(args) | Node::Max(args) => {
            let is_min = matches!(n, Node::Min(_));
            let mut acc: Option<f64> = None;
            for a in args {
                let v = num_of(eval(a, lookup)?)?;
                acc = Some(match acc {
                    None => v,
                    Some(c) if is_min => c.min(v),
                    Some(c) => c.max(v),
                });
            }
            V::Num(acc?)
        }
        Node::Bin(op, a, b) => {
            let a = eval(a, lookup)?;
            let b = eval(b, lookup)?;
            if matches!(op, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge) {
                return compare(*op, a, b).map(V::Num);
            }
            let (x, y) = (num_of(a)?, num_of(b)?);
            V::Num(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => {
                    if y == 0.0 {
                        0.0
                    } else {
                        x / y
                    }
                }
                BinOp::Rem => {
                    if x < 0.0 || y <= 0.0 {
                        0.0
                    } else {
                        x % y
                    }
                }
                BinOp::And => truth(x != 0.0 && y != 0.0),
                BinOp::Or => truth(x != 0.0 || y != 0.0),
                _ => return None,
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Str(String),
    Acc(String),
    Num,
    Root,
    Min,
    Max,
    LParen,
    RParen,
    Comma,
    Op(BinOp),
    Minus,
    Bang,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("integer {i}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Acc(a) => format!("accessor {a}"),
            Tok::Num => "'num'".into(),
            Tok::Root => "'root'".into(),
            Tok::Min => "'min'".into(),
            Tok::Max => "'max'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::Op(op) => format!("'{}'", op_text(*op)),
            Tok::Minus => "'-'".into(),
            Tok::Bang => "'!'".into(),
            Tok::End => "the end".into(),
        }
    }
}

fn op_text(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Rem => "%",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::And => "&&",
        BinOp::Or => "||",
    }
}

struct Token {
    tok: Tok,
    pos: usize,
}

fn is_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos, kind| Err(ExprError { pos, kind });
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = |x: u8| b.get(i + 1) == Some(&x);
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b',' => (Tok::Comma, 1),
            b'+' => (Tok::Op(BinOp::Add), 1),
            b'-' => (Tok::Minus, 1),
            b'*' => (Tok::Op(BinOp::Mul), 1),
            b'/' => (Tok::Op(BinOp::Div), 1),
            b'%' => (Tok::Op(BinOp::Rem), 1),
            b'=' if two(b'=') => (Tok::Op(BinOp::Eq), 2),
            b'!' if two(b'=') => (Tok::Op(BinOp::Ne), 2),
            b'!' => (Tok::Bang, 1),
            b'<' if two(b'=') => (Tok::Op(BinOp::Le), 2),
            b'<' => (Tok::Op(BinOp::Lt), 1),
            b'>' if two(b'=') => (Tok::Op(BinOp::Ge), 2),
            b'>' => (Tok::Op(BinOp::Gt), 1),
            b'&' if two(b'&') => (Tok::Op(BinOp::And), 2),
            b'|' if two(b'|') => (Tok::Op(BinOp::Or), 2),
            b'0'..=b'9' => {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j < b.len() && is_name(b[j]) {
                    return err(start, ExprErrorKind::BadInteger);
                }
                let text = &src[i..j];
                if text.len() > 1 && text.starts_with('0') {
                    return err(start, ExprErrorKind::BadInteger);
                }
                match text.parse::<i64>() {
                    Ok(v) => (Tok::Int(v), j - i),
                    Err(_) => return err(start, ExprErrorKind::BadInteger),
                }
            }
            b'"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return err(start, ExprErrorKind::UnterminatedString),
                        Some(b'"') => break,
                        Some(b'\\') if matches!(b.get(j + 1), Some(b'"' | b'\\')) => {
                            s.push(b[j + 1] as char);
                            j += 2;
                        }
                        Some(_) => {
                            // Copy one UTF-8 character.
                            let ch = src[j..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                (Tok::Str(s), j + 1 - i)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < b.len() && is_name(b[j]) {
                    j += 1;
                }
                let word = &src[i..j];
                let tok = match word {
                    "num" => Tok::Num,
                    "root" => Tok::Root,
                    "min" => Tok::Min,
                    "max" => Tok::Max,
                    _ => {
                        // KIND "." NAME ("." NAME)*
                        let mut k = j;
                        while k + 1 < b.len() && b[k] == b'.' && is_name(b[k + 1]) {
                            k += 1;
                            while k < b.len() && is_name(b[k]) {
                                k += 1;
                            }
                        }
                        if k == j {
                            return err(start, ExprErrorKind::UnknownIdentifier(word.to_owned()));
                        }
                        if word != "tag" && word != "stat" {
                            return err(start, ExprErrorKind::UnknownAccessorKind(word.to_owned()));
                        }
                        j = k;
                        Tok::Acc(src[i..k].to_owned())
                    }
                };
                (tok, j - i)
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                return err(start, ExprErrorKind::UnexpectedChar(ch));
            }
        };
        out.push(Token { tok, pos: start });
        i += len;
    }
    out.push(Token { tok: Tok::End, pos: src.len() });
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parser: precedence climbing. Each function returns the node and its depth.

struct Parser<'a> {
    toks: &'a [Token],
    i: usize,
}

/// Binding power of a binary operator (higher binds tighter).
fn power(op: BinOp) -> u8 {
    match op {
        BinOp::Or => 1,
        BinOp::And => 2,
        BinOp::Eq | BinOp::Ne => 3,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
        BinOp::Add | BinOp::Sub => 5,
        BinOp::Mul | BinOp::Div | BinOp::Rem => 6,
    }
}

type Parsed = Result<(Node, u32), ExprError>;

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `i` never passes it.
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> &Token {
        let i = self.i.min(self.toks.len() - 1);
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        &self.toks[i]
    }

    fn expect(&mut self, want: Tok, expected: &'static str) -> Result<(), ExprError> {
        let t = self.bump();
        if t.tok == want {
            Ok(())
        } else {
            Err(ExprError { pos: t.pos, kind: ExprErrorKind::Expected { expected, found: t.tok.describe() } })
        }
    }

    fn check_depth(&self, depth: u32, pos: usize) -> Result<u32, ExprError> {
        if depth > MAX_DEPTH {
            Err(ExprError { pos, kind: ExprErrorKind::TooDeep })
        } else {
            Ok(depth)
        }
    }

    /// Binary operators of at least `min_power`.
    fn expr(&mut self, min_power: u8) -> Parsed {
        let (mut lhs, mut depth) = self.unary()?;
        loop {
            let t = self.peek();
            let op = match t.tok {
                Tok::Op(op) => op,
                Tok::Minus => BinOp::Sub,
                _ => break,
            };
            let pos = t.pos;
            let p = power(op);
            if p < min_power {
                break;
            }
            self.bump();
            let (rhs, rd) = self.expr(p + 1)?;
            depth = self.check_depth(depth.max(rd) + 1, pos)?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, depth))
    }

    fn unary(&mut self) -> Parsed {
        let t = self.peek();
        let pos = t.pos;
        let wrap: fn(Box<Node>) -> Node = match t.tok {
            Tok::Minus => Node::Neg,
            Tok::Bang => Node::Not,
            Tok::Num => Node::Num,
            _ => return self.primary(),
        };
        self.bump();
        let (x, d) = self.unary()?;
        Ok((wrap(Box::new(x)), self.check_depth(d + 1, pos)?))
    }

    fn primary(&mut self) -> Parsed {
        let t = self.bump();
        let pos = t.pos;
        match &t.tok {
            Tok::Int(i) => Ok((Node::Int(*i), 1)),
            Tok::Str(s) => Ok((Node::Str(s.as_str().into()), 1)),
            Tok::Acc(a) => Ok((Node::Acc(a.as_str().into()), 1)),
            Tok::LParen => {
                let (x, d) = self.expr(0)?;
                self.expect(Tok::RParen, "')'")?;
                Ok((x, self.check_depth(d + 1, pos)?))
            }
            Tok::Root => {
                self.expect(Tok::LParen, "'(' after root")?;
                let (n, d1) = self.expr(0)?;
                self.expect(Tok::Comma, "',' between the arguments of root")?;
                let (x, d2) = self.expr(0)?;
                self.expect(Tok::RParen, "')' closing root")?;
                Ok((Node::Root(Box::new(n), Box::new(x)), self.check_depth(d1.max(d2) + 1, pos)?))
            }
            Tok::Min | Tok::Max => {
                let is_min = t.tok == Tok::Min;
                self.expect(Tok::LParen, "'(' after min/max")?;
                let mut args = Vec::new();
                let mut depth = 0;
                loop {
                    let (a, d) = self.expr(0)?;
                    args.push(a);
                    depth = depth.max(d);
                    let t = self.bump();
                    match t.tok {
                        Tok::Comma => continue,
                        Tok::RParen => break,
                        _ => {
                            return Err(ExprError {
                                pos: t.pos,
                                kind: ExprErrorKind::Expected { expected: "',' or ')'", found: t.tok.describe() },
                            })
                        }
                    }
                }
                let depth = self.check_depth(depth + 1, pos)?;
                Ok((if is_min { Node::Min(args) } else { Node::Max(args) }, depth))
            }
            other => Err(ExprError {
                pos,
                kind: ExprErrorKind::Expected { expected: "a value, accessor or '('", found: other.describe() },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(src: &str) -> Option<f64> {
        let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        e.eval(|name| match name {
            "stat.cpu" => Some(TagValueRef::Int(87)),
            "stat.io" => Some(TagValueRef::Float(64.0)),
            "stat.space" => Some(TagValueRef::Str("27")),
            "stat.word" => Some(TagValueRef::Str("abc")),
            "tag.up" => Some(TagValueRef::Bool(true)),
            "tag.down" => Some(TagValueRef::Bool(false)),
            "tag.vol" => Some(TagValueRef::Str("/var/lib")),
            "tag.n" => Some(TagValueRef::Int(12)),
            _ => None,
        })
    }

    fn err(src: &str) -> ExprError {
        match Expr::parse(src) {
            Ok(e) => panic!("{src} parsed as {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn literals_and_arithmetic() {
        assert_eq!(ev("100"), Some(100.0));
        assert_eq!(ev("0"), Some(0.0));
        assert_eq!(ev("1 + 2 * 3"), Some(7.0));
        assert_eq!(ev("(1 + 2) * 3"), Some(9.0));
        assert_eq!(ev("10 - 4 - 3"), Some(3.0));
        assert_eq!(ev("7 / 2"), Some(3.5));
        assert_eq!(ev("7 % 4"), Some(3.0));
        assert_eq!(ev("-5 + 2"), Some(-3.0));
        assert_eq!(ev("--5"), Some(5.0));
        assert_eq!(ev("2 * -3"), Some(-6.0));
        assert_eq!(ev("100-1"), Some(99.0));
    }

    #[test]
    fn division_and_modulo_edge_cases_are_zero() {
        assert_eq!(ev("5 / 0"), Some(0.0));
        assert_eq!(ev("5 % 0"), Some(0.0));
        assert_eq!(ev("-5 % 3"), Some(0.0));
        assert_eq!(ev("5 % -3"), Some(0.0));
        assert_eq!(ev("0 % 3"), Some(0.0));
    }

    #[test]
    fn comparisons_mean_what_they_say() {
        // The original lexer swapped these; each line here failed there.
        assert_eq!(ev("1 < 2"), Some(1.0));
        assert_eq!(ev("2 < 1"), Some(0.0));
        assert_eq!(ev("2 < 2"), Some(0.0));
        assert_eq!(ev("2 <= 2"), Some(1.0));
        assert_eq!(ev("3 <= 2"), Some(0.0));
        assert_eq!(ev("2 > 1"), Some(1.0));
        assert_eq!(ev("2 > 2"), Some(0.0));
        assert_eq!(ev("2 >= 2"), Some(1.0));
        assert_eq!(ev("1 >= 2"), Some(0.0));
        assert_eq!(ev("2 == 2"), Some(1.0));
        assert_eq!(ev("2 == 3"), Some(0.0));
        assert_eq!(ev("1 != 1"), Some(0.0));
        assert_eq!(ev("1 != 2"), Some(1.0));
        assert_eq!(ev("1 + 1 == 2"), Some(1.0));
        assert_eq!(ev("1 < 2 == 1"), Some(1.0));
        assert_eq!(ev("num stat.cpu > 50"), Some(1.0));
    }

    #[test]
    fn text_comparisons() {
        assert_eq!(ev("tag.vol == \"/var/lib\""), Some(1.0));
        assert_eq!(ev("tag.vol != \"/var/lib\""), Some(0.0));
        assert_eq!(ev("\"a\" < \"b\""), Some(1.0));
        assert_eq!(ev("stat.space == stat.space"), Some(1.0));
        // A string tag against a number tag: both read as numbers.
        assert_eq!(ev("stat.space < stat.cpu"), Some(1.0));
        assert_eq!(ev("stat.word < stat.cpu"), None);
    }

    #[test]
    fn logical_operators() {
        assert_eq!(ev("1 && 1"), Some(1.0));
        assert_eq!(ev("1 && 0"), Some(0.0));
        assert_eq!(ev("0 || 5"), Some(1.0));
        assert_eq!(ev("0 || 0"), Some(0.0));
        assert_eq!(ev("!0"), Some(1.0));
        assert_eq!(ev("!7"), Some(0.0));
        assert_eq!(ev("1 || 0 && 0"), Some(1.0), "&& binds tighter than ||");
        assert_eq!(ev("num tag.up && num tag.down"), Some(0.0));
        assert_eq!(ev("!num tag.down"), Some(1.0));
        assert_eq!(ev("1 || stat.missing"), None, "UNDEF propagates, no short-circuit");
    }

    #[test]
    fn accessors_num_and_length_rule() {
        assert_eq!(ev("num stat.cpu"), Some(87.0));
        assert_eq!(ev("num stat.io"), Some(64.0));
        assert_eq!(ev("num stat.space"), Some(27.0));
        assert_eq!(ev("num tag.up"), Some(1.0));
        assert_eq!(ev("num tag.down"), Some(0.0));
        // Without `num`: the length of the text.
        assert_eq!(ev("stat.cpu"), Some(2.0));
        assert_eq!(ev("stat.io"), Some(2.0));
        assert_eq!(ev("tag.vol"), Some(8.0));
        assert_eq!(ev("tag.down"), Some(1.0));
        assert_eq!(ev("\"hello\" + 1"), Some(6.0));
        assert_eq!(ev("num \"42\""), Some(42.0));
        assert_eq!(ev("num \" 4.5 \""), Some(4.5));
        assert_eq!(ev("num 3"), Some(3.0));
        assert_eq!(ev("num (1 + 2)"), Some(3.0));
        assert_eq!(ev("num stat.cpu * num stat.io"), Some(87.0 * 64.0));
    }

    #[test]
    fn undef_cases() {
        assert_eq!(ev("num stat.word"), None, "num of non-numeric text");
        assert_eq!(ev("num \"x\""), None);
        assert_eq!(ev("stat.missing"), None, "missing tag");
        assert_eq!(ev("num stat.missing + 1"), None);
        assert_eq!(ev("root(0, 5)"), None);
        assert_eq!(ev("max(1, stat.missing)"), None);
        assert_eq!(ev("-stat.missing"), None);
    }

    #[test]
    fn root_min_max() {
        assert_eq!(ev("root(2, 16)"), Some(4.0));
        assert_eq!(ev("root(3, 0)"), Some(0.0));
        let r = ev("root(2, ((num stat.cpu) * (num stat.io)))").unwrap();
        assert!((r - (87.0f64 * 64.0).sqrt()).abs() < 1e-9);
        assert_eq!(ev("min(3, 1, 2)"), Some(1.0));
        assert_eq!(ev("max(3, 1, 2)"), Some(3.0));
        assert_eq!(ev("min(7)"), Some(7.0));
        assert_eq!(ev("max(num stat.cpu, 90) - 1"), Some(89.0));
    }

    #[test]
    fn builtin_expressions_parse() {
        for s in
            ["100", "root(2,((num stat.cpu)*(num stat.io)))", "root(3,((num stat.cpu)*(num stat.io)*(num stat.space)))"]
        {
            let e = Expr::parse(s).unwrap();
            assert_eq!(e.source(), s);
            assert_eq!(e.to_string(), s);
        }
    }

    #[test]
    fn parse_errors_carry_positions() {
        assert_eq!(err("").kind, ExprErrorKind::Empty);
        assert_eq!(err("   ").kind, ExprErrorKind::Empty);
        let e = err("1 + ");
        assert_eq!(e.pos, 4);
        assert!(e.to_string().contains("at byte 4"), "{e}");
        let e = err("1 $ 2");
        assert_eq!((e.pos, e.kind.clone()), (2, ExprErrorKind::UnexpectedChar('$')));
        assert_eq!(err("(1 + 2").pos, 6);
        assert_eq!(err("1 2").pos, 2);
        let e = err("stat.cpu + cpu");
        assert_eq!((e.pos, e.kind), (11, ExprErrorKind::UnknownIdentifier("cpu".into())));
        let e = err("foo.bar");
        assert_eq!(e.kind, ExprErrorKind::UnknownAccessorKind("foo".into()));
        assert_eq!(err("\"abc").kind, ExprErrorKind::UnterminatedString);
        assert_eq!(err("99999999999999999999").kind, ExprErrorKind::BadInteger);
        assert_eq!(err("007").kind, ExprErrorKind::BadInteger);
        assert_eq!(err("1.5").pos, 1);
        assert_eq!(err("root(2)").pos, 6);
        assert_eq!(err("min()").pos, 4);
        assert_eq!(err("1 = 2").kind, ExprErrorKind::UnexpectedChar('='));
        assert_eq!(err("1 & 2").kind, ExprErrorKind::UnexpectedChar('&'));
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(err(&deep).kind, ExprErrorKind::TooDeep);
        let long = "1+".repeat(200) + "1";
        assert_eq!(err(&long).kind, ExprErrorKind::TooDeep);
        assert_eq!(err(&"1".repeat(MAX_LEN + 1)).kind, ExprErrorKind::TooLong);
    }

    #[test]
    fn text_len_of_values() {
        assert_eq!(TagValueRef::Int(-12).text_len(), 3);
        assert_eq!(TagValueRef::Float(1.5).text_len(), 3);
        assert_eq!(TagValueRef::Bool(false).text_len(), 1);
        assert_eq!(TagValueRef::Str("héllo").text_len(), 6);
    }
}
