//! FHIRPath, as far as FHIR's own definitions use it: the invariants of the R4 resources and
//! data types (`profiles/base/invariants.json`). An expression is parsed once (at start-up)
//! and evaluated against the JSON of a resource, without a model: elements are found by
//! name, a choice element `value` by its typed keys (`valueQuantity`, …), and a primitive's
//! `_element` twin travels with its value.
//!
//! Left out on purpose, so that an expression using them fails to parse and is not
//! evaluated: `resolve()`, terminology (`memberOf`), `$index`/`$total`, `aggregate`, and
//! the declared type of an element that is not a choice (`as(canonical)` on a plain string).
//! Dates compare as FHIRPath says for partial precisions: decided where the intervals they
//! cover do not overlap, empty (unknown) where they do.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::Value;

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    root: Ast,
}

#[derive(Debug, Clone)]
enum Ast {
    Empty,
    Literal(Literal),
    This,
    Constant(String),
    Member(Option<Box<Ast>>, String),
    Function(Option<Box<Ast>>, String, Vec<Ast>),
    Index(Box<Ast>, Box<Ast>),
    Negate(Box<Ast>),
    Binary(Operator, Box<Ast>, Box<Ast>),
    Is(Box<Ast>, String),
    As(Box<Ast>, String),
}

#[derive(Debug, Clone)]
enum Literal {
    Boolean(bool),
    Integer(i64),
    Decimal(f64),
    String(String),
    DateTime(String),
    Time(String),
    Quantity(f64, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Equal,
    NotEqual,
    Equivalent,
    NotEquivalent,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Union,
    Plus,
    Minus,
    Concatenate,
    Times,
    Divide,
    Div,
    Mod,
}

/// The functions the evaluator knows; an expression calling another one does not parse.
const FUNCTIONS: &[&str] = &[
    "empty", "exists", "all", "allTrue", "anyTrue", "allFalse", "anyFalse", "count", "distinct", "isDistinct", "where",
    "select", "repeat", "ofType", "single", "first", "last", "tail", "skip", "take", "intersect", "exclude", "union",
    "combine", "iif", "not", "hasValue", "children", "descendants", "trace", "toInteger", "toDecimal", "toString",
    "indexOf", "substring", "startsWith", "endsWith", "contains", "upper", "lower", "replace", "matches",
    "replaceMatches", "length", "is", "as", "extension", "hasExtension", "subsetOf", "supersetOf", "today", "now",
];

/// Data types whose name ends a choice element's key (`valueQuantity`).
const CHOICE_TYPES: &[&str] = &[
    "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id", "Instant", "Integer",
    "Markdown", "Oid", "PositiveInt", "String", "Time", "UnsignedInt", "Uri", "Url", "Uuid", "Address", "Age",
    "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint", "Count", "Distance", "Duration",
    "HumanName", "Identifier", "Money", "Period", "Quantity", "Range", "Ratio", "Reference", "SampledData",
    "Signature", "Timing", "ContactDetail", "Contributor", "DataRequirement", "Expression", "ParameterDefinition",
    "RelatedArtifact", "TriggerDefinition", "UsageContext", "Dosage", "Meta",
];

static NULL: Value = Value::Null;

/// One item of a collection: an element of the resource (with its `_element` twin and, for a
/// choice element or a resource, its type), or a value the expression computed.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    Node { value: &'a Value, twin: Option<&'a Value>, kind: Option<&'a str> },
    Boolean(bool),
    Integer(i64),
    Decimal(f64),
    String(String),
    DateTime(String),
    Quantity(f64, String),
}

impl<'a> Item<'a> {
    /// The element `value` of a resource (its type read from `resourceType` if it has one).
    pub fn node(value: &'a Value) -> Item<'a> {
        Item::Node { value, twin: None, kind: value.get("resourceType").and_then(Value::as_str) }
    }

    /// A primitive as a computed value (a node's JSON string, number or boolean).
    fn primitive(&self) -> Option<Item<'a>> {
        match self {
            Item::Node { value, .. } => match value {
                Value::Bool(b) => Some(Item::Boolean(*b)),
                Value::Number(n) => n.as_i64().map(Item::Integer).or_else(|| n.as_f64().map(Item::Decimal)),
                Value::String(s) => Some(Item::String(s.clone())),
                _ => None,
            },
            other => Some(other.clone()),
        }
    }

    fn type_name(&self) -> Option<&str> {
        match self {
            Item::Node { kind: Some(kind), .. } => Some(kind),
            Item::Node { value, .. } => match value {
                Value::Bool(_) => Some("boolean"),
                Value::Number(n) if n.is_i64() => Some("integer"),
                Value::Number(_) => Some("decimal"),
                Value::String(_) => Some("string"),
                _ => None,
            },
            Item::Boolean(_) => Some("Boolean"),
            Item::Integer(_) => Some("Integer"),
            Item::Decimal(_) => Some("Decimal"),
            Item::String(_) => Some("String"),
            Item::DateTime(_) => Some("DateTime"),
            Item::Quantity(..) => Some("Quantity"),
        }
    }

    fn object(&self) -> Option<&'a serde_json::Map<String, Value>> {
        match self {
            Item::Node { value: Value::Object(object), .. } => Some(object),
            _ => None,
        }
    }
}

type Collection<'a> = Vec<Item<'a>>;
type Evaluated<'a> = Result<Collection<'a>, String>;

/// What `%resource`, `%rootResource` and `%context` stand for in one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Environment<'a> {
    pub resource: &'a Value,
    pub root_resource: &'a Value,
}

/// The names of the choice elements of R4 (`value` of `value[x]`), from
/// `profiles/base/invariants.json`: only those are looked for by their typed keys, so
/// `response` does not find `responseCode`.
pub fn choice_elements() -> &'static HashSet<String> {
    static CHOICES: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    CHOICES.get_or_init(|| {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(rename = "choiceElements")]
            choice_elements: HashSet<String>,
        }
        serde_json::from_str::<File>(include_str!("../../profiles/base/invariants.json")).map(|f| f.choice_elements).unwrap_or_default()
    })
}

impl Expression {
    pub fn parse(text: &str) -> Result<Expression, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, position: 0, depth: 0 };
        let root = parser.expression(0)?;
        match parser.peek() {
            None => Ok(Expression { root }),
            Some(token) => Err(format!("unexpected {token:?}")),
        }
    }

    /// The collection the expression yields on `focus`.
    pub fn evaluate<'a>(&self, focus: Item<'a>, environment: Environment<'a>) -> Result<Vec<Item<'a>>, String> {
        let context = vec![focus];
        Evaluator { environment, context: &context, depth: 0 }.eval(&self.root, &context)
    }

    /// The expression as a condition: `Some(true/false)` for a single boolean (any other
    /// single item counts as true), `None` where it yields nothing.
    pub fn holds<'a>(&self, focus: Item<'a>, environment: Environment<'a>) -> Result<Option<bool>, String> {
        truth(&self.evaluate(focus, environment)?)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    Quoted(String),
    String(String),
    Number(String),
    DateTime(String),
    Time(String),
    Constant(String),
    This,
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    const SYMBOLS: &[&str] = &["!=", "!~", "<=", ">=", ".", ",", "(", ")", "[", "]", "{", "}", "|", "+", "-", "*", "/", "&", "=", "~", "<", ">"];
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    let text_between = |from: usize, to: usize| -> String { chars.get(from..to).map(|part| part.iter().collect()).unwrap_or_default() };
    while let Some(c) = at(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == Some('/') {
            while at(i).is_some_and(|c| c != '\n') {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == Some('*') {
            i += 2;
            while at(i).is_some() && !(at(i) == Some('*') && at(i + 1) == Some('/')) {
                i += 1;
            }
            i += 2;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                i += 1;
            }
            tokens.push(Token::Identifier(text_between(start, i)));
        } else if c == '`' || c == '\'' {
            let (content, next) = quoted(&chars, i)?;
            i = next;
            tokens.push(if c == '`' { Token::Quoted(content) } else { Token::String(content) });
        } else if c.is_ascii_digit() {
            let start = i;
            while at(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            if at(i) == Some('.') && at(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
                while at(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
            }
            tokens.push(Token::Number(text_between(start, i)));
        } else if c == '@' {
            let start = i + 1;
            i += 1;
            while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+')) {
                i += 1;
            }
            let literal = text_between(start, i);
            tokens.push(match literal.strip_prefix('T') {
                Some(time) => Token::Time(time.to_owned()),
                None => Token::DateTime(literal),
            });
        } else if c == '%' {
            i += 1;
            let name = match at(i) {
                Some('`' | '\'') => {
                    let (content, next) = quoted(&chars, i)?;
                    i = next;
                    content
                }
                _ => {
                    let start = i;
                    while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                        i += 1;
                    }
                    text_between(start, i)
                }
            };
            tokens.push(Token::Constant(name));
        } else if c == '$' {
            let start = i + 1;
            i += 1;
            while at(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
                i += 1;
            }
            let name = text_between(start, i);
            if name != "this" {
                return Err(format!("${name} is not supported"));
            }
            tokens.push(Token::This);
        } else {
            let rest = text_between(i, chars.len().min(i + 2));
            let symbol = SYMBOLS.iter().find(|s| rest.starts_with(**s)).ok_or_else(|| format!("unexpected character '{c}'"))?;
            i += symbol.chars().count();
            tokens.push(Token::Symbol(symbol));
        }
    }
    Ok(tokens)
}

/// A quoted string or identifier starting at `start`, with FHIRPath's escapes.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars.get(start).copied().unwrap_or('\'');
    let mut content = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i).copied() {
            None => return Err("unterminated string".to_owned()),
            Some(c) if c == quote => return Ok((content, i + 1)),
            Some('\\') => {
                let escaped = chars.get(i + 1).copied().ok_or("unterminated escape")?;
                match escaped {
                    'n' => content.push('\n'),
                    't' => content.push('\t'),
                    'r' => content.push('\r'),
                    'f' => content.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.get(i + 2..i + 6).ok_or("short \\u escape")?.iter().collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| "bad \\u escape")?;
                        content.push(char::from_u32(code).ok_or("bad \\u escape")?);
                        i += 4;
                    }
                    other => content.push(other),
                }
                i += 2;
            }
            Some(c) => {
                content.push(c);
                i += 1;
            }
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

/// How deeply an expression may nest (the parser recurses; an operator's configured
/// SearchParameter must not take it past the stack).
const MAX_NESTING: usize = 64;

/// Binding power of an infix operator (higher binds tighter), FHIRPath's precedence table.
fn infix(token: &Token) -> Option<(u8, Option<Operator>)> {
    let operator = match token {
        Token::Identifier(word) => match word.as_str() {
            "implies" => (1, Some(Operator::Implies)),
            "or" => (2, Some(Operator::Or)),
            "xor" => (2, Some(Operator::Xor)),
            "and" => (3, Some(Operator::And)),
            "in" => (4, Some(Operator::In)),
            "contains" => (4, Some(Operator::Contains)),
            "is" | "as" => (8, None),
            "div" => (10, Some(Operator::Div)),
            "mod" => (10, Some(Operator::Mod)),
            _ => return None,
        },
        Token::Symbol(symbol) => match *symbol {
            "=" => (5, Some(Operator::Equal)),
            "!=" => (5, Some(Operator::NotEqual)),
            "~" => (5, Some(Operator::Equivalent)),
            "!~" => (5, Some(Operator::NotEquivalent)),
            "<" => (6, Some(Operator::Less)),
            "<=" => (6, Some(Operator::LessOrEqual)),
            ">" => (6, Some(Operator::Greater)),
            ">=" => (6, Some(Operator::GreaterOrEqual)),
            "|" => (7, Some(Operator::Union)),
            "+" => (9, Some(Operator::Plus)),
            "-" => (9, Some(Operator::Minus)),
            "&" => (9, Some(Operator::Concatenate)),
            "*" => (10, Some(Operator::Times)),
            "/" => (10, Some(Operator::Divide)),
            _ => return None,
        },
        _ => return None,
    };
    Some(operator)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), String> {
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            other => Err(format!("expected '{symbol}', found {other:?}")),
        }
    }

    fn expression(&mut self, minimum: u8) -> Result<Ast, String> {
        self.depth += 1;
        let parsed = self.expression_within(minimum);
        self.depth -= 1;
        parsed
    }

    fn expression_within(&mut self, minimum: u8) -> Result<Ast, String> {
        if self.depth > MAX_NESTING {
            return Err(format!("the expression nests more than {MAX_NESTING} deep"));
        }
        let mut left = self.unary()?;
        while let Some((power, operator)) = self.peek().and_then(infix) {
            if power <= minimum {
                break;
            }
            let word = self.next();
            left = match operator {
                Some(operator) => Ast::Binary(operator, Box::new(left), Box::new(self.expression(power)?)),
                None => {
                    let name = self.type_name()?;
                    match word {
                        Some(Token::Identifier(w)) if w == "is" => Ast::Is(Box::new(left), name),
                        _ => Ast::As(Box::new(left), name),
                    }
                }
            };
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Result<String, String> {
        let mut name = match self.next() {
            Some(Token::Identifier(name) | Token::Quoted(name)) => name,
            other => return Err(format!("expected a type name, found {other:?}")),
        };
        while self.peek() == Some(&Token::Symbol(".")) {
            self.next();
            match self.next() {
                Some(Token::Identifier(part) | Token::Quoted(part)) => name = format!("{name}.{part}"),
                other => return Err(format!("expected a type name, found {other:?}")),
            }
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Ast, String> {
        match self.peek() {
            Some(Token::Symbol("-")) => {
                self.next();
                Ok(Ast::Negate(Box::new(self.expression(10)?)))
            }
            Some(Token::Symbol("+")) => {
                self.next();
                self.expression(10)
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Ast, String> {
        let mut term = self.term()?;
        loop {
            match self.peek() {
                Some(Token::Symbol(".")) => {
                    self.next();
                    term = self.invocation(Some(term))?;
                }
                Some(Token::Symbol("[")) => {
                    self.next();
                    let index = self.expression(0)?;
                    self.expect_symbol("]")?;
                    term = Ast::Index(Box::new(term), Box::new(index));
                }
                _ => return Ok(term),
            }
        }
    }

    fn invocation(&mut self, target: Option<Ast>) -> Result<Ast, String> {
        let name = match self.next() {
            Some(Token::Identifier(name) | Token::Quoted(name)) => name,
            Some(Token::This) if target.is_none() => return Ok(Ast::This),
            other => return Err(format!("expected a name, found {other:?}")),
        };
        if self.peek() != Some(&Token::Symbol("(")) {
            return Ok(Ast::Member(target.map(Box::new), name));
        }
        self.next();
        if !FUNCTIONS.contains(&name.as_str()) {
            return Err(format!("the function {name}() is not supported"));
        }
        let mut arguments = Vec::new();
        if self.peek() == Some(&Token::Symbol(")")) {
            self.next();
        } else {
            loop {
                if matches!(name.as_str(), "is" | "as" | "ofType") {
                    arguments.push(Ast::Literal(Literal::String(self.type_name()?)));
                } else {
                    arguments.push(self.expression(0)?);
                }
                match self.next() {
                    Some(Token::Symbol(",")) => continue,
                    Some(Token::Symbol(")")) => break,
                    other => return Err(format!("expected ',' or ')', found {other:?}")),
                }
            }
        }
        Ok(Ast::Function(target.map(Box::new), name, arguments))
    }

    fn term(&mut self) -> Result<Ast, String> {
        match self.peek().cloned() {
            Some(Token::Symbol("(")) => {
                self.next();
                let inner = self.expression(0)?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            Some(Token::Symbol("{")) => {
                self.next();
                self.expect_symbol("}")?;
                Ok(Ast::Empty)
            }
            Some(Token::String(text)) => {
                self.next();
                Ok(Ast::Literal(Literal::String(text)))
            }
            Some(Token::Number(text)) => {
                self.next();
                let number = if text.contains('.') {
                    Literal::Decimal(text.parse().map_err(|_| format!("bad number {text}"))?)
                } else {
                    Literal::Integer(text.parse().map_err(|_| format!("bad number {text}"))?)
                };
                if let Some(Token::String(unit)) = self.peek().cloned() {
                    self.next();
                    let value = match number {
                        Literal::Integer(i) => i as f64,
                        Literal::Decimal(d) => d,
                        _ => 0.0,
                    };
                    return Ok(Ast::Literal(Literal::Quantity(value, unit)));
                }
                Ok(Ast::Literal(number))
            }
            Some(Token::DateTime(text)) => {
                self.next();
                Ok(Ast::Literal(Literal::DateTime(text)))
            }
            Some(Token::Time(text)) => {
                self.next();
                Ok(Ast::Literal(Literal::Time(text)))
            }
            Some(Token::Constant(name)) => {
                self.next();
                Ok(Ast::Constant(name))
            }
            Some(Token::Identifier(word)) if word == "true" || word == "false" => {
                self.next();
                Ok(Ast::Literal(Literal::Boolean(word == "true")))
            }
            Some(Token::Identifier(_) | Token::Quoted(_) | Token::This) => self.invocation(None),
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

struct Evaluator<'a, 'c> {
    environment: Environment<'a>,
    context: &'c [Item<'a>],
    depth: usize,
}

/// A collection as a condition (FHIRPath's singleton evaluation of collections).
fn truth(collection: &[Item<'_>]) -> Result<Option<bool>, String> {
    match collection {
        [] => Ok(None),
        [single] => Ok(Some(match single.primitive() {
            Some(Item::Boolean(b)) => b,
            _ => true,
        })),
        _ => Err("a condition yielded several items".to_owned()),
    }
}

fn boolean<'a>(value: Option<bool>) -> Collection<'a> {
    value.map(Item::Boolean).into_iter().collect()
}

/// The type name without its namespace, for comparison (`FHIR.Quantity`, `System.Boolean`).
fn bare_type(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn is_of_type(item: &Item<'_>, name: &str) -> bool {
    let wanted = bare_type(name);
    match item.type_name() {
        Some(own) if own.eq_ignore_ascii_case(wanted) => true,
        // FHIR's primitives are the System types they hold.
        Some("boolean") => wanted == "Boolean",
        Some("integer") => wanted == "Integer",
        Some("decimal") => wanted == "Decimal",
        Some("string") => matches!(wanted, "String"),
        _ => false,
    }
}

/// The children of an element called `name`: its value(s), each with its `_name` twin, or
/// the typed keys of a choice element.
fn children_named<'a>(object: &'a serde_json::Map<String, Value>, name: &str, choices: &HashSet<String>, out: &mut Collection<'a>) {
    let twin = object.get(&format!("_{name}"));
    match (object.get(name), twin) {
        (Some(Value::Array(items)), twin) => {
            let twins = twin.and_then(Value::as_array);
            for (index, value) in items.iter().enumerate() {
                let twin = twins.and_then(|t| t.get(index)).filter(|t| !t.is_null());
                out.push(Item::Node { value, twin, kind: value.get("resourceType").and_then(Value::as_str) });
            }
        }
        (Some(value), twin) => out.push(Item::Node { value, twin, kind: value.get("resourceType").and_then(Value::as_str) }),
        (None, Some(Value::Array(twins))) => {
            out.extend(twins.iter().filter(|t| !t.is_null()).map(|t| Item::Node { value: &NULL, twin: Some(t), kind: None }))
        }
        (None, Some(twin)) => out.push(Item::Node { value: &NULL, twin: Some(twin), kind: None }),
        (None, None) if choices.contains(name) => {
            for (key, value) in object {
                let Some(suffix) = key.strip_prefix(name) else { continue };
                if CHOICE_TYPES.contains(&suffix) {
                    let twin = object.get(&format!("_{key}"));
                    out.push(Item::Node { value, twin, kind: Some(suffix) });
                }
            }
            for (key, twin) in object {
                let Some(suffix) = key.strip_prefix('_').and_then(|k| k.strip_prefix(name)) else { continue };
                if CHOICE_TYPES.contains(&suffix) && !object.contains_key(&key[1..]) {
                    out.push(Item::Node { value: &NULL, twin: Some(twin), kind: Some(suffix) });
                }
            }
        }
        (None, None) => {}
    }
}

fn all_children<'a>(item: &Item<'a>, choices: &HashSet<String>, out: &mut Collection<'a>) {
    let Some(object) = item.object() else { return };
    for key in object.keys() {
        if key == "resourceType" || key.starts_with('_') {
            continue;
        }
        let start = out.len();
        children_named(object, key, choices, out);
        // A choice element's key names its type.
        let choice_type = CHOICE_TYPES.iter().find(|t| key.strip_suffix(**t).is_some_and(|stem| choices.contains(stem)));
        if let Some(suffix) = choice_type {
            for child in out.iter_mut().skip(start) {
                if let Item::Node { kind: kind @ None, .. } = child {
                    *kind = Some(suffix);
                }
            }
        }
    }
}

/// Equality of two single items: `None` where FHIRPath says unknown (dates of different
/// precision that overlap).
fn equal(left: &Item<'_>, right: &Item<'_>) -> Option<bool> {
    if let (Item::Node { value: a, .. }, Item::Node { value: b, .. }) = (left, right) {
        if a.is_object() || b.is_object() {
            return Some(a == b);
        }
    }
    match (left.primitive()?, right.primitive()?) {
        (Item::DateTime(a), Item::DateTime(b) | Item::String(b)) | (Item::String(a), Item::DateTime(b)) => compare_dates(&a, &b).map(|o| o == Ordering::Equal),
        (a, b) => compare(&a, &b).map(|o| o == Ordering::Equal).or(Some(false)),
    }
}

fn equivalent(left: &Item<'_>, right: &Item<'_>) -> bool {
    match (left.primitive(), right.primitive()) {
        (Some(Item::String(a)), Some(Item::String(b))) => {
            let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            normal(&a) == normal(&b)
        }
        _ => equal(left, right).unwrap_or(false),
    }
}

fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 4 && bytes.iter().take(4).all(u8::is_ascii_digit) && (bytes.len() == 4 || bytes.get(4) == Some(&b'-'))
}

fn compare_dates(a: &str, b: &str) -> Option<Ordering> {
    let (a_low, a_high) = crate::fhir::dates::precision_range(a)?;
    let (b_low, b_high) = crate::fhir::dates::precision_range(b)?;
    if a_low == b_low && a_high == b_high {
        Some(Ordering::Equal)
    } else if a_high <= b_low {
        Some(Ordering::Less)
    } else if a_low >= b_high {
        Some(Ordering::Greater)
    } else {
        None
    }
}

/// Order of two primitive items, `None` where they do not compare.
fn compare(left: &Item<'_>, right: &Item<'_>) -> Option<Ordering> {
    let number = |item: &Item<'_>| match item {
        Item::Integer(i) => Some(*i as f64),
        Item::Decimal(d) => Some(*d),
        _ => None,
    };
    match (left, right) {
        (Item::Boolean(a), Item::Boolean(b)) => Some(a.cmp(b)),
        (Item::DateTime(a), Item::DateTime(b) | Item::String(b)) | (Item::String(a), Item::DateTime(b)) => compare_dates(a, b),
        (Item::String(a), Item::String(b)) if looks_like_date(a) && looks_like_date(b) && a.len() != b.len() => compare_dates(a, b),
        (Item::String(a), Item::String(b)) => Some(a.cmp(b)),
        (Item::Quantity(a, unit_a), Item::Quantity(b, unit_b)) if unit_a == unit_b => a.partial_cmp(b),
        (a, b) => number(a)?.partial_cmp(&number(b)?),
    }
}

fn single_string(collection: &[Item<'_>]) -> Result<Option<String>, String> {
    match collection {
        [] => Ok(None),
        [item] => Ok(match item.primitive() {
            Some(Item::String(s) | Item::DateTime(s)) => Some(s),
            _ => None,
        }),
        _ => Err("a string function was given several items".to_owned()),
    }
}

fn single_integer(collection: &[Item<'_>]) -> Result<Option<i64>, String> {
    match collection {
        [] => Ok(None),
        [item] => Ok(match item.primitive() {
            Some(Item::Integer(i)) => Some(i),
            _ => None,
        }),
        _ => Err("an integer was expected, several items found".to_owned()),
    }
}

fn full_match(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| format!("bad regular expression: {e}"))
}

/// The items without repeats, in order. Items are compared by a canonical text (the JSON of
/// an element, a tagged primitive), so a Bundle of thousands of entries costs one pass, not
/// a comparison of every pair.
fn distinct<'a>(items: Collection<'a>) -> Collection<'a> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.into_iter().filter(|item| seen.insert(canonical(item))).collect()
}

fn canonical(item: &Item<'_>) -> String {
    match item {
        Item::Node { value, .. } if value.is_object() || value.is_array() => format!("j{value}"),
        other => match other.primitive() {
            Some(Item::Boolean(b)) => format!("b{b}"),
            Some(Item::Integer(i)) => format!("n{}", i as f64),
            Some(Item::Decimal(d)) => format!("n{d}"),
            Some(Item::String(text)) => format!("s{text}"),
            Some(Item::DateTime(text)) => format!("s{text}"),
            Some(Item::Quantity(v, unit)) => format!("q{v} {unit}"),
            _ => String::from("null"),
        },
    }
}

impl<'a> Evaluator<'a, '_> {
    fn eval(&self, ast: &Ast, this: &[Item<'a>]) -> Evaluated<'a> {
        match ast {
            Ast::Empty => Ok(Vec::new()),
            Ast::This => Ok(this.to_vec()),
            Ast::Literal(literal) => Ok(vec![match literal {
                Literal::Boolean(b) => Item::Boolean(*b),
                Literal::Integer(i) => Item::Integer(*i),
                Literal::Decimal(d) => Item::Decimal(*d),
                Literal::String(s) => Item::String(s.clone()),
                Literal::DateTime(s) => Item::DateTime(s.clone()),
                Literal::Time(s) => Item::String(s.clone()),
                Literal::Quantity(v, u) => Item::Quantity(*v, u.clone()),
            }]),
            Ast::Constant(name) => Ok(match name.as_str() {
                "resource" => vec![Item::node(self.environment.resource)],
                "rootResource" => vec![Item::node(self.environment.root_resource)],
                "context" => self.context.to_vec(),
                "ucum" => vec![Item::String("http://unitsofmeasure.org".to_owned())],
                "sct" => vec![Item::String("http://snomed.info/sct".to_owned())],
                "loinc" => vec![Item::String("http://loinc.org".to_owned())],
                other => return Err(format!("unknown constant %{other}")),
            }),
            Ast::Member(target, name) => {
                let input = match target {
                    Some(target) => self.eval(target, this)?,
                    None => this.to_vec(),
                };
                let mut out = Vec::new();
                for item in &input {
                    let Some(object) = item.object() else { continue };
                    if target.is_none() && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        // A type name at the start of a path: the focus, if it is one.
                        if is_of_type(item, name) {
                            out.push(item.clone());
                        }
                        continue;
                    }
                    children_named(object, name, choice_elements(), &mut out);
                }
                Ok(out)
            }
            Ast::Index(target, index) => {
                let input = self.eval(target, this)?;
                let index = single_integer(&self.eval(index, this)?)?;
                Ok(index.and_then(|i| usize::try_from(i).ok()).and_then(|i| input.into_iter().nth(i)).into_iter().collect())
            }
            Ast::Negate(inner) => self
                .eval(inner, this)?
                .into_iter()
                .map(|item| match item.primitive() {
                    Some(Item::Integer(i)) => Ok(Item::Integer(-i)),
                    Some(Item::Decimal(d)) => Ok(Item::Decimal(-d)),
                    Some(Item::Quantity(v, u)) => Ok(Item::Quantity(-v, u)),
                    _ => Err("only numbers can be negated".to_owned()),
                })
                .collect(),
            Ast::Is(target, name) => {
                let input = self.eval(target, this)?;
                match input.as_slice() {
                    [] => Ok(Vec::new()),
                    [item] => Ok(vec![Item::Boolean(is_of_type(item, name))]),
                    _ => Err("'is' was given several items".to_owned()),
                }
            }
            Ast::As(target, name) => Ok(self.eval(target, this)?.into_iter().filter(|item| is_of_type(item, name)).collect()),
            Ast::Binary(operator, left, right) => self.binary(*operator, left, right, this),
            Ast::Function(target, name, arguments) => {
                let input = match target {
                    Some(target) => self.eval(target, this)?,
                    None => this.to_vec(),
                };
                self.function(name, input, arguments, this)
            }
        }
    }

    fn binary(&self, operator: Operator, left: &Ast, right: &Ast, this: &[Item<'a>]) -> Evaluated<'a> {
        use Operator::*;
        if matches!(operator, And | Or | Xor | Implies) {
            let a = truth(&self.eval(left, this)?)?;
            // Short circuits, as FHIRPath's tables allow.
            match (operator, a) {
                (And, Some(false)) => return Ok(boolean(Some(false))),
                (Or, Some(true)) => return Ok(boolean(Some(true))),
                (Implies, Some(false)) => return Ok(boolean(Some(true))),
                _ => {}
            }
            let b = truth(&self.eval(right, this)?)?;
            return Ok(boolean(match operator {
                And => match (a, b) {
                    (Some(true), Some(true)) => Some(true),
                    (_, Some(false)) => Some(false),
                    _ => None,
                },
                Or => match (a, b) {
                    (Some(false), Some(false)) => Some(false),
                    (_, Some(true)) => Some(true),
                    _ => None,
                },
                Xor => match (a, b) {
                    (Some(a), Some(b)) => Some(a != b),
                    _ => None,
                },
                _ => match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            }));
        }
        let a = self.eval(left, this)?;
        let b = self.eval(right, this)?;
        match operator {
            Union => {
                let mut all = a;
                all.extend(b);
                Ok(distinct(all))
            }
            In | Contains => {
                let (element, collection) = if operator == In { (a, b) } else { (b, a) };
                match element.as_slice() {
                    [] => Ok(Vec::new()),
                    [item] => Ok(vec![Item::Boolean(collection.iter().any(|c| equal(item, c) == Some(true)))]),
                    _ => Err("membership of several items".to_owned()),
                }
            }
            Equal | NotEqual => {
                if a.is_empty() || b.is_empty() {
                    return Ok(Vec::new());
                }
                let same = if a.len() != b.len() {
                    Some(false)
                } else {
                    a.iter().zip(&b).map(|(x, y)| equal(x, y)).try_fold(true, |all, e| e.map(|e| all && e))
                };
                Ok(boolean(same.map(|s| if operator == Equal { s } else { !s })))
            }
            Equivalent | NotEquivalent => {
                let same = a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| equivalent(x, y)));
                Ok(vec![Item::Boolean(if operator == Equivalent { same } else { !same })])
            }
            Less | LessOrEqual | Greater | GreaterOrEqual => {
                let (Some(x), Some(y)) = (single(&a)?.and_then(|i| i.primitive()), single(&b)?.and_then(|i| i.primitive())) else {
                    return Ok(Vec::new());
                };
                Ok(boolean(compare(&x, &y).map(|order| match operator {
                    Less => order == Ordering::Less,
                    LessOrEqual => order != Ordering::Greater,
                    Greater => order == Ordering::Greater,
                    _ => order != Ordering::Less,
                })))
            }
            Concatenate => {
                let text = |c: &[Item<'a>]| single_string(c).map(Option::unwrap_or_default);
                Ok(vec![Item::String(text(&a)? + &text(&b)?)])
            }
            _ => {
                let (Some(x), Some(y)) = (single(&a)?.and_then(|i| i.primitive()), single(&b)?.and_then(|i| i.primitive())) else {
                    return Ok(Vec::new());
                };
                arithmetic(operator, x, y).map(|r| r.into_iter().collect())
            }
        }
    }

    fn function(&self, name: &str, input: Collection<'a>, arguments: &[Ast], this: &[Item<'a>]) -> Evaluated<'a> {
        let argument = |index: usize| -> Evaluated<'a> {
            match arguments.get(index) {
                Some(ast) => self.eval(ast, this),
                None => Err(format!("{name}() needs argument {}", index + 1)),
            }
        };
        // A lambda: the argument evaluated on each item of the input.
        let each = |item: &Item<'a>, index: usize| -> Evaluated<'a> {
            let ast = arguments.get(index).ok_or_else(|| format!("{name}() needs argument {}", index + 1))?;
            if self.depth > 64 {
                return Err("the expression nests too deeply".to_owned());
            }
            Evaluator { environment: self.environment, context: self.context, depth: self.depth + 1 }.eval(ast, std::slice::from_ref(item))
        };
        let string_argument = |index: usize| -> Result<Option<String>, String> { single_string(&argument(index)?) };
        let input_string = || single_string(&input);
        Ok(match name {
            "empty" => vec![Item::Boolean(input.is_empty())],
            "exists" if arguments.is_empty() => vec![Item::Boolean(!input.is_empty())],
            "exists" => {
                let mut found = false;
                for item in &input {
                    if truth(&each(item, 0)?)? == Some(true) {
                        found = true;
                        break;
                    }
                }
                vec![Item::Boolean(found)]
            }
            "all" => {
                let mut all = true;
                for item in &input {
                    if truth(&each(item, 0)?)? != Some(true) {
                        all = false;
                        break;
                    }
                }
                vec![Item::Boolean(all)]
            }
            "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
                let values: Vec<Option<bool>> = input.iter().map(|i| truth(std::slice::from_ref(i))).collect::<Result<_, _>>()?;
                vec![Item::Boolean(match name {
                    "allTrue" => values.iter().all(|v| *v == Some(true)),
                    "anyTrue" => values.contains(&Some(true)),
                    "allFalse" => values.iter().all(|v| *v == Some(false)),
                    _ => values.contains(&Some(false)),
                })]
            }
            "count" => vec![Item::Integer(input.len() as i64)],
            "distinct" => distinct(input),
            "isDistinct" => {
                let count = input.len();
                vec![Item::Boolean(distinct(input).len() == count)]
            }
            "where" => {
                let mut kept = Vec::new();
                for item in input {
                    if truth(&each(&item, 0)?)? == Some(true) {
                        kept.push(item);
                    }
                }
                kept
            }
            "select" => {
                let mut out = Vec::new();
                for item in &input {
                    out.extend(each(item, 0)?);
                }
                out
            }
            "repeat" => {
                let mut out: Collection<'a> = Vec::new();
                let mut frontier = input;
                while !frontier.is_empty() && out.len() < 10_000 {
                    let mut next = Vec::new();
                    for item in &frontier {
                        next.extend(each(item, 0)?);
                    }
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                out
            }
            "ofType" | "as" => {
                let wanted = string_argument(0)?.unwrap_or_default();
                input.into_iter().filter(|i| is_of_type(i, &wanted)).collect()
            }
            "is" => {
                let wanted = string_argument(0)?.unwrap_or_default();
                match input.as_slice() {
                    [] => Vec::new(),
                    [item] => vec![Item::Boolean(is_of_type(item, &wanted))],
                    _ => return Err("is() was given several items".to_owned()),
                }
            }
            "single" => match input.len() {
                0 | 1 => input,
                _ => return Err("single() was given several items".to_owned()),
            },
            "first" => input.into_iter().take(1).collect(),
            "last" => input.into_iter().last().into_iter().collect(),
            "tail" => input.into_iter().skip(1).collect(),
            "skip" | "take" => {
                let n = usize::try_from(single_integer(&argument(0)?)?.unwrap_or(0)).unwrap_or(0);
                if name == "skip" {
                    input.into_iter().skip(n).collect()
                } else {
                    input.into_iter().take(n).collect()
                }
            }
            "intersect" | "exclude" | "subsetOf" | "supersetOf" => {
                let other = argument(0)?;
                let inside = |item: &Item<'a>, set: &[Item<'a>]| set.iter().any(|o| equal(item, o) == Some(true));
                match name {
                    "intersect" => distinct(input.into_iter().filter(|i| inside(i, &other)).collect()),
                    "exclude" => input.into_iter().filter(|i| !inside(i, &other)).collect(),
                    "subsetOf" => vec![Item::Boolean(input.iter().all(|i| inside(i, &other)))],
                    _ => vec![Item::Boolean(other.iter().all(|o| inside(o, &input)))],
                }
            }
            "union" => {
                let mut all = input;
                all.extend(argument(0)?);
                distinct(all)
            }
            "combine" => {
                let mut all = input;
                all.extend(argument(0)?);
                all
            }
            "iif" => {
                let condition = truth(&argument(0)?)?;
                if condition == Some(true) {
                    argument(1)?
                } else if arguments.len() > 2 {
                    argument(2)?
                } else {
                    Vec::new()
                }
            }
            "not" => match truth(&input)? {
                Some(value) => vec![Item::Boolean(!value)],
                None => Vec::new(),
            },
            "hasValue" => vec![Item::Boolean(matches!(input.as_slice(), [Item::Node { value, .. }] if !value.is_null() && !value.is_object() && !value.is_array()))],
            "children" => {
                let mut out = Vec::new();
                for item in &input {
                    all_children(item, choice_elements(), &mut out);
                }
                out
            }
            "descendants" => {
                let mut out = Vec::new();
                let mut frontier = input;
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for item in &frontier {
                        all_children(item, choice_elements(), &mut next);
                    }
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                out
            }
            "trace" => input,
            "toInteger" => match single(&input)?.and_then(|i| i.primitive()) {
                Some(Item::Integer(i)) => vec![Item::Integer(i)],
                Some(Item::String(s)) => s.parse::<i64>().ok().map(Item::Integer).into_iter().collect(),
                Some(Item::Boolean(b)) => vec![Item::Integer(i64::from(b))],
                _ => Vec::new(),
            },
            "toDecimal" => match single(&input)?.and_then(|i| i.primitive()) {
                Some(Item::Integer(i)) => vec![Item::Decimal(i as f64)],
                Some(Item::Decimal(d)) => vec![Item::Decimal(d)],
                Some(Item::String(s)) => s.parse::<f64>().ok().map(Item::Decimal).into_iter().collect(),
                _ => Vec::new(),
            },
            "toString" => match single(&input)?.and_then(|i| i.primitive()) {
                Some(Item::String(s) | Item::DateTime(s)) => vec![Item::String(s)],
                Some(Item::Integer(i)) => vec![Item::String(i.to_string())],
                Some(Item::Decimal(d)) => vec![Item::String(d.to_string())],
                Some(Item::Boolean(b)) => vec![Item::String(b.to_string())],
                Some(Item::Quantity(v, u)) => vec![Item::String(format!("{v} '{u}'"))],
                _ => Vec::new(),
            },
            "length" => input_string()?.map(|s| Item::Integer(s.chars().count() as i64)).into_iter().collect(),
            "upper" => input_string()?.map(|s| Item::String(s.to_uppercase())).into_iter().collect(),
            "lower" => input_string()?.map(|s| Item::String(s.to_lowercase())).into_iter().collect(),
            "startsWith" | "endsWith" | "contains" | "indexOf" => {
                let (Some(text), Some(part)) = (input_string()?, string_argument(0)?) else { return Ok(Vec::new()) };
                vec![match name {
                    "startsWith" => Item::Boolean(text.starts_with(&part)),
                    "endsWith" => Item::Boolean(text.ends_with(&part)),
                    "contains" => Item::Boolean(text.contains(&part)),
                    _ => Item::Integer(text.find(&part).map_or(-1, |byte| text[..byte].chars().count() as i64)),
                }]
            }
            "substring" => {
                let Some(text) = input_string()? else { return Ok(Vec::new()) };
                let start = single_integer(&argument(0)?)?.unwrap_or(0);
                let chars: Vec<char> = text.chars().collect();
                let Some(start) = usize::try_from(start).ok().filter(|s| *s < chars.len()) else { return Ok(Vec::new()) };
                let length = if arguments.len() > 1 { single_integer(&argument(1)?)?.and_then(|l| usize::try_from(l).ok()) } else { None };
                let end = length.map_or(chars.len(), |l| (start + l).min(chars.len()));
                chars.get(start..end).map(|part| Item::String(part.iter().collect())).into_iter().collect()
            }
            "matches" => {
                let (Some(text), Some(pattern)) = (input_string()?, string_argument(0)?) else { return Ok(Vec::new()) };
                vec![Item::Boolean(full_match(&pattern)?.is_match(&text))]
            }
            "replaceMatches" | "replace" => {
                let (Some(text), Some(pattern), Some(with)) = (input_string()?, string_argument(0)?, string_argument(1)?) else {
                    return Ok(Vec::new());
                };
                if name == "replace" {
                    vec![Item::String(text.replace(&pattern, &with))]
                } else {
                    let expression = regex::Regex::new(&pattern).map_err(|e| format!("bad regular expression: {e}"))?;
                    vec![Item::String(expression.replace_all(&text, with.as_str()).into_owned())]
                }
            }
            "extension" | "hasExtension" => {
                let url = string_argument(0)?.unwrap_or_default();
                let mut out = Vec::new();
                for item in &input {
                    let mut extensions = Vec::new();
                    if let Some(object) = item.object() {
                        children_named(object, "extension", choice_elements(), &mut extensions);
                    }
                    if let Item::Node { twin: Some(Value::Object(twin)), .. } = item {
                        children_named(twin, "extension", choice_elements(), &mut extensions);
                    }
                    out.extend(extensions.into_iter().filter(|e| e.object().and_then(|o| o.get("url")).and_then(Value::as_str) == Some(url.as_str())));
                }
                if name == "hasExtension" {
                    vec![Item::Boolean(!out.is_empty())]
                } else {
                    out
                }
            }
            "today" | "now" => {
                let now = chrono::Utc::now();
                vec![Item::DateTime(if name == "today" { now.format("%Y-%m-%d").to_string() } else { crate::fhir::dates::format_instant(now) })]
            }
            other => return Err(format!("the function {other}() is not supported")),
        })
    }
}

fn single<'a, 'c>(collection: &'c [Item<'a>]) -> Result<Option<&'c Item<'a>>, String> {
    match collection {
        [] => Ok(None),
        [item] => Ok(Some(item)),
        _ => Err("a single item was expected, several found".to_owned()),
    }
}

fn arithmetic<'a>(operator: Operator, x: Item<'a>, y: Item<'a>) -> Result<Option<Item<'a>>, String> {
    use Operator::*;
    Ok(match (operator, x, y) {
        (Plus, Item::String(a), Item::String(b)) => Some(Item::String(a + &b)),
        (_, Item::Integer(a), Item::Integer(b)) => match operator {
            Plus => a.checked_add(b).map(Item::Integer),
            Minus => a.checked_sub(b).map(Item::Integer),
            Times => a.checked_mul(b).map(Item::Integer),
            Divide => (b != 0).then(|| Item::Decimal(a as f64 / b as f64)),
            Div => a.checked_div(b).map(Item::Integer),
            _ => a.checked_rem(b).map(Item::Integer),
        },
        (_, a, b) => {
            let number = |item: &Item<'_>| match item {
                Item::Integer(i) => Some(*i as f64),
                Item::Decimal(d) => Some(*d),
                _ => None,
            };
            let (Some(a), Some(b)) = (number(&a), number(&b)) else {
                return Err("arithmetic on values that are not numbers".to_owned());
            };
            match operator {
                Plus => Some(Item::Decimal(a + b)),
                Minus => Some(Item::Decimal(a - b)),
                Times => Some(Item::Decimal(a * b)),
                Divide => (b != 0.0).then(|| Item::Decimal(a / b)),
                Div => (b != 0.0).then(|| Item::Integer((a / b).trunc() as i64)),
                _ => (b != 0.0).then(|| Item::Decimal(a % b)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{Environment, Expression, Item};
    use serde_json::{json, Value};

    fn holds(expression: &str, focus: &Value) -> Option<bool> {
        let parsed = Expression::parse(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
        let environment = Environment { resource: focus, root_resource: focus };
        parsed.holds(Item::node(focus), environment).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    #[test]
    fn invariants_of_the_specification_decide() {
        let period = json!({ "start": "2026-11-02T10:00:00+09:00", "end": "2026-11-02T09:00:00+09:00" });
        let per_1 = "start.hasValue().not() or end.hasValue().not() or (start <= end)";
        assert_eq!(holds(per_1, &period), Some(false));
        // A day and a time in it: unknown, which the validator lets pass.
        assert_eq!(holds(per_1, &json!({ "start": "2026-11-02", "end": "2026-11-02T17:00:00+09:00" })), None);
        assert_eq!(holds(per_1, &json!({ "start": "2026-11-01", "end": "2026-11-02T17:00:00+09:00" })), Some(true));
        assert_eq!(holds(per_1, &json!({ "start": "2027", "end": "2026-11" })), Some(false));
        let ext_1 = "extension.exists() != value.exists()";
        assert_eq!(holds(ext_1, &json!({ "url": "u", "valueString": "a" })), Some(true));
        assert_eq!(holds(ext_1, &json!({ "url": "u", "valueString": "a", "extension": [{ "url": "p", "valueCode": "x" }] })), Some(false));
        assert_eq!(holds(ext_1, &json!({ "url": "u" })), Some(false));
        let qty_3 = "code.empty() or system.exists()";
        assert_eq!(holds(qty_3, &json!({ "value": 1, "code": "mg" })), Some(false));
        let age_1 = "(code.exists() or value.empty()) and (system.empty() or system = %ucum) and (value.empty() or value.hasValue().not() or value > 0)";
        assert_eq!(holds(age_1, &json!({ "value": 3, "code": "a", "system": "http://unitsofmeasure.org" })), Some(true));
        assert_eq!(holds(age_1, &json!({ "value": -3, "code": "a", "system": "http://unitsofmeasure.org" })), Some(false));
        let que_7 = "operator = 'exists' implies (answer is Boolean)";
        assert_eq!(holds(que_7, &json!({ "operator": "exists", "answerBoolean": true })), Some(true));
        assert_eq!(holds(que_7, &json!({ "operator": "exists", "answerString": "x" })), Some(false));
        let bdl_7 = "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&iif(resource.meta.versionId.exists(), resource.meta.versionId, '')).isDistinct()";
        let twice = json!({ "type": "collection", "entry": [{ "fullUrl": "urn:a" }, { "fullUrl": "urn:a" }] });
        assert_eq!(holds(bdl_7, &twice), Some(false));
        assert_eq!(holds(bdl_7, &json!({ "type": "collection", "entry": [{ "fullUrl": "urn:a" }, { "fullUrl": "urn:b" }] })), Some(true));
        let sdf = "name.matches('[A-Z]([A-Za-z0-9_]){0,254}')";
        assert_eq!(holds(sdf, &json!({ "name": "Good_1" })), Some(true));
        assert_eq!(holds(sdf, &json!({ "name": "bad name" })), Some(false));
        let cpb = "rest.resource.select(type).isDistinct()";
        assert_eq!(holds(cpb, &json!({ "rest": [{ "resource": [{ "type": "A" }, { "type": "A" }] }] })), Some(false));
        // Distinctness over thousands of items (bdl-7 on a large transaction) in one pass.
        let entries: Vec<Value> = (0..20_000).map(|i| json!({ "fullUrl": format!("urn:uuid:{i}") })).collect();
        assert_eq!(holds(bdl_7, &json!({ "type": "transaction", "entry": entries })), Some(true));
        assert_eq!(holds("(1 | 1.0 | 'a' | 'a').count() = 2", &json!({})), Some(true));
    }

    #[test]
    fn the_choice_elements_are_loaded() {
        assert!(super::choice_elements().contains("value") && super::choice_elements().contains("deceased"));
        assert!(!super::choice_elements().contains("response"));
    }

    #[test]
    fn primitives_carry_their_extensions_and_empty_is_unknown() {
        let only_extension = json!({ "_birthDate": { "extension": [{ "url": "u", "valueCode": "unknown" }] } });
        assert_eq!(holds("birthDate.exists()", &only_extension), Some(true));
        assert_eq!(holds("birthDate.hasValue()", &only_extension), Some(false));
        assert_eq!(holds("birthDate.extension('u').exists()", &only_extension), Some(true));
        assert_eq!(holds("a = b", &json!({})), None);
        assert_eq!(holds("a.empty() and (1 + 2 * 3) = 7 and 7 div 2 = 3 and 'ab' & {} = 'ab' and -(2) < 0", &json!({})), Some(true));
        assert_eq!(holds("code in ('a' | 'b')", &json!({ "code": "b" })), Some(true));
        // Only a choice element is found by its typed keys.
        assert_eq!(holds("response.count() + value.count() = 1", &json!({ "responseCode": "200", "valueCode": "x" })), Some(true));
        assert!(Expression::parse("x.resolve()").is_err());
        assert!(Expression::parse("x.where(").is_err());
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Expression::parse(&deep).is_err(), "refused, not a stack overflow");
        assert!(Expression::parse(&"-".repeat(10_000)).is_err());
    }
}
