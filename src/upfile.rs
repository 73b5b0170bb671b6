//! The up-file (`rcrun.yaml`) that `rcrun up` reads: services, and the jobs that run
//! against them.
//!
//! The YAML is read with saphyr-parser's event stream into a small tree that keeps
//! each node's position, then converted by hand, so that every error (syntax, types,
//! unknown keys, references between entries) can name `FILE:LINE:COL: KEYPATH`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput};
use serde::Serialize;

/// A parsed up-file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpFile {
    pub path: PathBuf,
    pub services: BTreeMap<String, ServiceDef>,
    pub jobs: BTreeMap<String, JobDef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDef {
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Exposed ports; each is health-checked.
    pub ports: Vec<PortSpec>,
    pub health: Health,
    /// Cache volume name -> absolute path in the container.
    pub cache: BTreeMap<String, String>,
    pub instance: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub stop_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: netns::Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub cmd: Option<Vec<String>>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            cmd: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobDef {
    pub image: String,
    /// Alias (a DNS name, lower-cased) -> service name.
    pub bind: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub run: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

const TOP_KEYS: &[&str] = &["services", "jobs"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "entrypoint",
    "command",
    "env",
    "ports",
    "health",
    "cache",
    "instance",
    "user",
    "workdir",
    "stop_timeout",
];
const HEALTH_KEYS: &[&str] = &["cmd", "interval", "timeout"];
const JOB_KEYS: &[&str] = &["image", "bind", "env", "run", "workdir", "user"];

/// Reads and parses the up-file at `path`.
pub fn load(path: &Path) -> Result<UpFile> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "{}: no such file; write an up-file (see README) or pass -f FILE",
            path.display()
        ),
        _ => anyhow!("{}: {e}", path.display()),
    })?;
    parse(path, &text)
}

/// Parses an up-file's text; `path` is only used in messages, as given.
pub fn parse(path: &Path, text: &str) -> Result<UpFile> {
    let cx = Cx { file: path };
    let root = Builder {
        cx,
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
    }
    .document()?;
    let root = match root {
        Some(n) if !matches!(n.kind, Kind::Null) => n,
        _ => {
            return Err(cx.fail(
                (1, 1),
                "",
                "the file is empty; define services: and/or jobs: (see README)",
            ));
        }
    };
    let top = cx.mapping(&root, "", TOP_KEYS, "a mapping with services: and/or jobs:")?;
    if top.entries.is_empty() {
        return Err(cx.fail(
            root.pos,
            "",
            "neither services: nor jobs: is defined; define at least one",
        ));
    }

    let mut services = BTreeMap::new();
    if let Some((node, path)) = top.get("services") {
        let entries = cx.entries(node, &path, "a mapping of service names to settings")?;
        for (key, value) in entries {
            let path = child(&path, &key.text());
            let name = cx.entry_name(key, &path, "service")?;
            services.insert(name, cx.service(key, value, &path)?);
        }
    }
    let mut jobs = BTreeMap::new();
    if let Some((node, path)) = top.get("jobs") {
        let entries = cx.entries(node, &path, "a mapping of job names to settings")?;
        for (key, value) in entries {
            let path = child(&path, &key.text());
            let name = cx.entry_name(key, &path, "job")?;
            if services.contains_key(&name) {
                return Err(cx.fail(
                    key.pos,
                    &path,
                    "a service has the same name; give jobs and services distinct names",
                ));
            }
            jobs.insert(name, cx.job(key, value, &path, &services)?);
        }
    }
    Ok(UpFile {
        path: path.to_path_buf(),
        services,
        jobs,
    })
}

/// `1s`, `500ms`, `2m`, `1h`, `1m30s`, `1.5s`; a plain number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    const SECOND: u128 = 1_000_000_000;
    let mut rest = s;
    let mut nanos: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let letters = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(letters);
        let unit = match unit {
            "ms" => SECOND / 1000,
            "s" => SECOND,
            "m" => 60 * SECOND,
            "h" => 3600 * SECOND,
            // A bare number only on its own: "1m30" is more likely a mistake.
            "" if number.len() == s.len() => SECOND,
            _ => return None,
        };
        nanos = nanos.checked_add(scaled(number, unit)?)?;
        rest = tail;
    }
    let secs = u64::try_from(nanos / SECOND).ok()?;
    Some(Duration::new(secs, (nanos % SECOND) as u32))
}

/// `number` (digits, maybe a fraction) times `unit` nanoseconds, rounded down.
fn scaled(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().ok()?.into()
    };
    // Nanoseconds are the resolution: digits past the ninth cannot matter.
    let fraction = &fraction[..fraction.len().min(9)];
    let part = if fraction.is_empty() {
        0
    } else {
        u128::from(fraction.parse::<u64>().ok()?) * unit / 10u128.pow(fraction.len() as u32)
    };
    whole.checked_mul(unit)?.checked_add(part)
}

// ---- the YAML tree ----

/// Line and column, both from 1.
type Pos = (usize, usize);

#[derive(Clone, Debug)]
struct Node {
    pos: Pos,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Null,
    /// Any other scalar, as written: numbers and booleans stay text.
    Scalar(String),
    Seq(Vec<Node>),
    /// Keys are scalars, without duplicates.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A mapping key's text.
    fn text(&self) -> String {
        match &self.kind {
            Kind::Scalar(s) => s.clone(),
            _ => String::new(),
        }
    }

    /// What was found, for "expected X, got Y".
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing (null)".into(),
            Kind::Scalar(s) => format!("{s:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

/// Bounds that keep a hostile file (deep nesting, alias bombs) from exhausting the
/// stack or memory.
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 100_000;

struct Builder<'a> {
    cx: Cx<'a>,
    parser: Parser<'a, StrInput<'a>>,
    /// Anchor id -> the anchored node and its size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

fn pos(span: &Span) -> Pos {
    (span.start.line(), span.start.col() + 1)
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span)> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => {
                let m = e.marker();
                Err(self.cx.fail(
                    (m.line(), m.col() + 1),
                    "",
                    format!("YAML syntax error: {}", e.info()),
                ))
            }
            None => Err(anyhow!(
                "{}: unexpected end of YAML",
                self.cx.file.display()
            )),
        }
    }

    /// The only document's root, or None for a file with no document at all.
    fn document(mut self) -> Result<Option<Node>> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) if root.is_some() => {
                    return Err(self.cx.fail(
                        pos(&span),
                        "",
                        "a second YAML document; an up-file is one document, remove this '---'",
                    ));
                }
                Event::DocumentStart(_) => {
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span, "", 0)?);
                }
                _ => return Err(self.cx.fail(pos(&span), "", "unexpected YAML event")),
            }
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span, path: &str, depth: usize) -> Result<Node> {
        if depth > MAX_DEPTH {
            return Err(self.cx.fail(pos(&span), path, "nested too deeply"));
        }
        let start = self.nodes;
        self.count(1, &span, path)?;
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                // YAML 1.2 core schema nulls, unless quoted or tagged.
                let null = style == ScalarStyle::Plain
                    && tag.is_none()
                    && matches!(&*text, "" | "~" | "null" | "Null" | "NULL");
                let kind = if null {
                    Kind::Null
                } else {
                    Kind::Scalar(text.into_owned())
                };
                (kind, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let path = index(path, items.len());
                    items.push(self.node(event, span, &path, depth + 1)?);
                }
                (Kind::Seq(items), anchor)
            }
            Event::MappingStart(anchor, _) => (Kind::Map(self.entries(path, depth)?), anchor),
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id).cloned() else {
                    return Err(self.cx.fail(pos(&span), path, "unknown alias"));
                };
                self.count(size, &span, path)?;
                return Ok(node);
            }
            _ => return Err(self.cx.fail(pos(&span), path, "unexpected YAML event")),
        };
        let node = Node {
            pos: pos(&span),
            kind: node,
        };
        if anchor != 0 {
            self.anchors
                .insert(anchor, (node.clone(), self.nodes - start));
        }
        Ok(node)
    }

    fn entries(&mut self, path: &str, depth: usize) -> Result<Vec<(Node, Node)>> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                return Ok(entries);
            }
            let key = self.node(event, span, path, depth + 1)?;
            let Kind::Scalar(text) = &key.kind else {
                return Err(self.cx.fail(
                    key.pos,
                    path,
                    format!("a key must be text, got {}", key.describe()),
                ));
            };
            let path = child(path, text);
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.text() == *text) {
                return Err(self.cx.fail(
                    key.pos,
                    &path,
                    format!("duplicate key (first at line {}); remove one", first.pos.0),
                ));
            }
            let (event, span) = self.next()?;
            let value = self.node(event, span, &path, depth + 1)?;
            entries.push((key, value));
        }
    }

    fn count(&mut self, n: usize, span: &Span, path: &str) -> Result<()> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.cx.fail(
                pos(span),
                path,
                "too many YAML nodes (aliases expanding?); simplify the file",
            ));
        }
        Ok(())
    }
}

/// `parent.key`; keys other than plain words are quoted so the path stays readable.
fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

// ---- conversion to the typed definitions ----

#[derive(Clone, Copy)]
struct Cx<'a> {
    file: &'a Path,
}

/// A mapping whose keys have been checked against the allowed ones.
struct Mapping<'n> {
    entries: &'n [(Node, Node)],
    path: String,
}

impl<'n> Mapping<'n> {
    /// The value under `key` and its path.
    fn get(&self, key: &str) -> Option<(&'n Node, String)> {
        self.entries
            .iter()
            .find(|(k, _)| k.text() == key)
            .map(|(_, v)| (v, child(&self.path, key)))
    }
}

/// How a single string is taken where a list of words is expected.
#[derive(Clone, Copy)]
enum OneString {
    /// As the only word.
    Word,
    /// As a shell command: `["sh", "-c", s]`.
    Shell,
}

impl<'a> Cx<'a> {
    fn fail(&self, (line, col): Pos, path: &str, problem: impl Display) -> anyhow::Error {
        let file = self.file.display();
        if path.is_empty() {
            anyhow!("{file}:{line}:{col}: {problem}")
        } else {
            anyhow!("{file}:{line}:{col}: {path}: {problem}")
        }
    }

    fn expected(&self, node: &Node, path: &str, what: &str) -> anyhow::Error {
        self.fail(
            node.pos,
            path,
            format!("expected {what}, got {}", node.describe()),
        )
    }

    fn entries<'n>(&self, node: &'n Node, path: &str, what: &str) -> Result<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(entries) => Ok(entries),
            _ => Err(self.expected(node, path, what)),
        }
    }

    fn mapping<'n>(
        &self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
        what: &str,
    ) -> Result<Mapping<'n>> {
        let entries = self.entries(node, path, what)?;
        for (key, _) in entries {
            if !allowed.contains(&key.text().as_str()) {
                return Err(self.fail(
                    key.pos,
                    &child(path, &key.text()),
                    format!("unknown key (expected one of {})", allowed.join(", ")),
                ));
            }
        }
        Ok(Mapping {
            entries,
            path: path.to_string(),
        })
    }

    /// A scalar as text (numbers and booleans as written).
    fn string(&self, node: &Node, path: &str) -> Result<String> {
        match &node.kind {
            Kind::Scalar(s) if s.contains('\0') => {
                Err(self.fail(node.pos, path, "contains a NUL character"))
            }
            Kind::Scalar(s) => Ok(s.clone()),
            _ => Err(self.expected(node, path, "a string")),
        }
    }

    fn optional_string(&self, m: &Mapping, key: &str) -> Result<Option<String>> {
        m.get(key)
            .map(|(node, path)| self.string(node, &path))
            .transpose()
    }

    /// A required, non-empty string; its absence is reported at `owner`.
    fn required_string(&self, m: &Mapping, key: &str, owner: &Node) -> Result<String> {
        let Some((node, path)) = m.get(key) else {
            return Err(self.fail(
                owner.pos,
                &m.path,
                format!("missing required key {key:?}; add {key}: …"),
            ));
        };
        let s = self.string(node, &path)?;
        if s.is_empty() {
            return Err(self.fail(node.pos, &path, "must not be empty"));
        }
        Ok(s)
    }

    fn words(&self, node: &Node, path: &str, one: OneString) -> Result<Vec<String>> {
        match (&node.kind, one) {
            (Kind::Seq(items), _) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(item, &index(path, i)))
                .collect(),
            (Kind::Scalar(_), OneString::Word) => Ok(vec![self.string(node, path)?]),
            (Kind::Scalar(_), OneString::Shell) => {
                Ok(vec!["sh".into(), "-c".into(), self.string(node, path)?])
            }
            _ => Err(self.expected(node, path, "a list of strings or a string")),
        }
    }

    /// A command to run: a non-empty list, or a string for `sh -c`.
    fn command(&self, m: &Mapping, key: &str) -> Result<Option<Vec<String>>> {
        let Some((node, path)) = m.get(key) else {
            return Ok(None);
        };
        let words = self.words(node, &path, OneString::Shell)?;
        if words.is_empty() {
            return Err(self.fail(
                node.pos,
                &path,
                format!("the command is empty; give a command or remove {key}:"),
            ));
        }
        Ok(Some(words))
    }

    fn env(&self, m: &Mapping) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let Some((node, path)) = m.get("env") else {
            return Ok(env);
        };
        for (key, value) in self.entries(node, &path, "a mapping of NAME: value")? {
            let name = key.text();
            let path = child(&path, &name);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(self.fail(
                    key.pos,
                    &path,
                    "invalid variable name; it must be non-empty, without '=' or NUL",
                ));
            }
            let value = match value.kind {
                Kind::Scalar(_) => self.string(value, &path)?,
                _ => {
                    return Err(self.expected(
                        value,
                        &path,
                        "a string, number or boolean (\"\" for an empty value)",
                    ));
                }
            };
            env.insert(name, value);
        }
        Ok(env)
    }

    fn duration(&self, node: &Node, path: &str, zero_ok: bool) -> Result<Duration> {
        let d = match &node.kind {
            Kind::Scalar(s) => parse_duration(s),
            _ => None,
        };
        match d {
            Some(d) if zero_ok || !d.is_zero() => Ok(d),
            Some(_) => Err(self.fail(node.pos, path, "must be more than 0")),
            None => Err(self.expected(node, path, "a duration like 1s, 500ms, 2m or 1m30s")),
        }
    }

    fn optional_duration(
        &self,
        m: &Mapping,
        key: &str,
        default: Duration,
        zero_ok: bool,
    ) -> Result<Duration> {
        m.get(key).map_or(Ok(default), |(node, path)| {
            self.duration(node, &path, zero_ok)
        })
    }

    /// An absolute path in the container, without `..`.
    fn container_path(&self, node: &Node, path: &str) -> Result<String> {
        let s = self.string(node, path)?;
        let p = Path::new(&s);
        if !p.is_absolute() {
            return Err(self.fail(
                node.pos,
                path,
                format!("{s:?} is not an absolute path; start it with /"),
            ));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(self.fail(node.pos, path, format!("{s:?} must not contain '..'")));
        }
        Ok(s)
    }

    /// A service or job name: one lower-case RFC 1123 label, as it names containers
    /// and appears in commands like `rcrun service logs NAME`.
    fn entry_name(&self, key: &Node, path: &str, kind: &str) -> Result<String> {
        let name = key.text();
        let ok =
            !name.contains('.') && name.parse::<dnsd::Name>().is_ok_and(|n| n.as_str() == name);
        if !ok {
            return Err(self.fail(
                key.pos,
                path,
                format!(
                    "invalid {kind} name; use lower-case letters, digits and '-' \
                     (at most 63, not starting or ending with '-')"
                ),
            ));
        }
        Ok(name)
    }

    fn service(&self, key: &Node, node: &Node, path: &str) -> Result<ServiceDef> {
        let m = self.mapping(node, path, SERVICE_KEYS, "a mapping of service settings")?;
        let health = match m.get("health") {
            Some((node, path)) => self.health(node, &path)?,
            None => Health::default(),
        };
        let workdir = match m.get("workdir") {
            Some((node, path)) => Some(self.container_path(node, &path)?),
            None => None,
        };
        Ok(ServiceDef {
            image: self.required_string(&m, "image", key)?,
            entrypoint: m
                .get("entrypoint")
                .map(|(node, path)| self.words(node, &path, OneString::Word))
                .transpose()?,
            command: m
                .get("command")
                .map(|(node, path)| self.words(node, &path, OneString::Word))
                .transpose()?,
            env: self.env(&m)?,
            ports: self.ports(&m)?,
            health,
            cache: self.cache(&m)?,
            instance: self.optional_string(&m, "instance")?,
            user: self.optional_string(&m, "user")?,
            workdir,
            stop_timeout: self.optional_duration(&m, "stop_timeout", DEFAULT_STOP_TIMEOUT, true)?,
        })
    }

    fn health(&self, node: &Node, path: &str) -> Result<Health> {
        let m = self.mapping(node, path, HEALTH_KEYS, "a mapping of health settings")?;
        let default = Health::default();
        Ok(Health {
            cmd: self.command(&m, "cmd")?,
            interval: self.optional_duration(&m, "interval", default.interval, false)?,
            timeout: self.optional_duration(&m, "timeout", default.timeout, false)?,
        })
    }

    fn ports(&self, m: &Mapping) -> Result<Vec<PortSpec>> {
        let Some((node, path)) = m.get("ports") else {
            return Ok(Vec::new());
        };
        let Kind::Seq(items) = &node.kind else {
            return Err(self.fail(
                node.pos,
                &path,
                format!(
                    "expected a list of ports, got {}; write [PORT, …]",
                    node.describe()
                ),
            ));
        };
        let mut ports: Vec<PortSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = index(&path, i);
            let port = match &item.kind {
                Kind::Scalar(s) => parse_port(s),
                _ => None,
            }
            .ok_or_else(|| {
                self.expected(item, &path, "a port number 1-65535 or \"PORT/tcp|udp\"")
            })?;
            if let Some(first) = ports.iter().position(|p| *p == port) {
                return Err(self.fail(
                    item.pos,
                    &path,
                    format!(
                        "{}/{} is listed twice (first at ports[{first}]); remove one",
                        port.port, port.protocol
                    ),
                ));
            }
            ports.push(port);
        }
        Ok(ports)
    }

    fn cache(&self, m: &Mapping) -> Result<BTreeMap<String, String>> {
        let mut cache: BTreeMap<String, String> = BTreeMap::new();
        let Some((node, path)) = m.get("cache") else {
            return Ok(cache);
        };
        let entries = self.entries(node, &path, "a mapping of volume names to container paths")?;
        for (key, value) in entries {
            let name = key.text();
            let path = child(&path, &name);
            crate::spec::validate_name("volume", &name)
                .map_err(|e| self.fail(key.pos, &path, e))?;
            let target = self.container_path(value, &path)?;
            if target == "/" {
                return Err(self.fail(value.pos, &path, "a cache volume cannot be /"));
            }
            // Path equality ignores trailing and repeated slashes.
            if let Some((other, _)) = cache
                .iter()
                .find(|(_, t)| Path::new(t.as_str()) == Path::new(&target))
            {
                return Err(self.fail(
                    value.pos,
                    &path,
                    format!(
                        "{target:?} is already the path of volume {other:?}; \
                         give each volume its own path"
                    ),
                ));
            }
            cache.insert(name, target);
        }
        Ok(cache)
    }

    fn job(
        &self,
        key: &Node,
        node: &Node,
        path: &str,
        services: &BTreeMap<String, ServiceDef>,
    ) -> Result<JobDef> {
        let m = self.mapping(node, path, JOB_KEYS, "a mapping of job settings")?;
        let workdir = match m.get("workdir") {
            Some((node, path)) => Some(self.container_path(node, &path)?),
            None => None,
        };
        Ok(JobDef {
            image: self.required_string(&m, "image", key)?,
            bind: self.bind(&m, services)?,
            env: self.env(&m)?,
            run: self.command(&m, "run")?,
            workdir,
            user: self.optional_string(&m, "user")?,
        })
    }

    fn bind(
        &self,
        m: &Mapping,
        services: &BTreeMap<String, ServiceDef>,
    ) -> Result<BTreeMap<String, String>> {
        let mut bind = BTreeMap::new();
        let Some((node, path)) = m.get("bind") else {
            return Ok(bind);
        };
        for (key, value) in self.entries(node, &path, "a mapping of alias: service")? {
            let alias = key.text();
            let path = child(&path, &alias);
            let name = alias.parse::<dnsd::Name>().map_err(|e| {
                self.fail(
                    key.pos,
                    &path,
                    format!("{e}; an alias is a host name the job uses for the service"),
                )
            })?;
            let service = self.string(value, &path)?;
            if !services.contains_key(&service) {
                let defined = if services.is_empty() {
                    "no services are defined".to_string()
                } else {
                    let names: Vec<&str> = services.keys().map(String::as_str).collect();
                    format!("defined: {}", names.join(", "))
                };
                return Err(self.fail(
                    value.pos,
                    &path,
                    format!("service {service:?} is not defined ({defined})"),
                ));
            }
            // DNS names are case-insensitive, so "DB" and "db" would be one alias.
            if bind.insert(name.as_str().to_string(), service).is_some() {
                return Err(self.fail(
                    key.pos,
                    &path,
                    format!("alias {:?} is bound twice; remove one", name.as_str()),
                ));
            }
        }
        Ok(bind)
    }
}

/// `3306`, `3306/tcp`, `53/udp`.
fn parse_port(s: &str) -> Option<PortSpec> {
    let (number, protocol) = match s.split_once('/') {
        Some((n, "tcp")) => (n, netns::Protocol::Tcp),
        Some((n, "udp")) => (n, netns::Protocol::Udp),
        Some(_) => return None,
        None => (s, netns::Protocol::Tcp),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match number.parse::<u16>() {
        Ok(port) if port > 0 => Some(PortSpec { port, protocol }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"services:
  db:
    image: 127.0.0.1:5000/mariadb:10.11
    env: { MARIADB_ROOT_PASSWORD: secret }
    ports: [3306]                 # exposed; each is health-checked
    health: { cmd: ["mysqladmin", "ping"], interval: 1s, timeout: 120s }   # optional
    cache: { mariadb-data: /var/lib/mysql }                                 # cache volumes
  kv:
    image: 127.0.0.1:5000/redis:7
    ports: [6379]
jobs:
  test:
    image: 127.0.0.1:5000/client:latest
    bind: { db: db, cache: kv }    # alias: service
    env: { DATABASE_URL: "mysql://root:secret@db/test" }
    run: ["sh", "-c", "mysql -h db -psecret -e 'select 1' && redis-cli -h cache ping"]
"#;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tcp(port: u16) -> PortSpec {
        PortSpec {
            port,
            protocol: netns::Protocol::Tcp,
        }
    }

    fn service(image: &str) -> ServiceDef {
        ServiceDef {
            image: image.into(),
            entrypoint: None,
            command: None,
            env: BTreeMap::new(),
            ports: Vec::new(),
            health: Health::default(),
            cache: BTreeMap::new(),
            instance: None,
            user: None,
            workdir: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    fn ok(text: &str) -> UpFile {
        parse(Path::new("rcrun.yaml"), text).unwrap()
    }

    /// Asserts the error starts with `rcrun.yaml:{at}: ` and contains `has`.
    #[track_caller]
    fn fails(text: &str, at: &str, has: &str) {
        let e = parse(Path::new("rcrun.yaml"), text)
            .expect_err("should fail")
            .to_string();
        assert!(
            e.starts_with(&format!("rcrun.yaml:{at}: ")),
            "error {e:?} is not at {at}"
        );
        assert!(e.contains(has), "error {e:?} lacks {has:?}");
    }

    #[test]
    fn example_parses() {
        let up = ok(EXAMPLE);
        let db = ServiceDef {
            env: map(&[("MARIADB_ROOT_PASSWORD", "secret")]),
            ports: vec![tcp(3306)],
            health: Health {
                cmd: Some(strings(&["mysqladmin", "ping"])),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(120),
            },
            cache: map(&[("mariadb-data", "/var/lib/mysql")]),
            ..service("127.0.0.1:5000/mariadb:10.11")
        };
        let kv = ServiceDef {
            ports: vec![tcp(6379)],
            ..service("127.0.0.1:5000/redis:7")
        };
        let test = JobDef {
            image: "127.0.0.1:5000/client:latest".into(),
            bind: map(&[("db", "db"), ("cache", "kv")]),
            env: map(&[("DATABASE_URL", "mysql://root:secret@db/test")]),
            run: Some(strings(&[
                "sh",
                "-c",
                "mysql -h db -psecret -e 'select 1' && redis-cli -h cache ping",
            ])),
            workdir: None,
            user: None,
        };
        assert_eq!(
            up,
            UpFile {
                path: "rcrun.yaml".into(),
                services: [("db".to_string(), db), ("kv".to_string(), kv)].into(),
                jobs: [("test".to_string(), test)].into(),
            }
        );
    }

    #[test]
    fn every_field() {
        let up = ok(r#"
services:
  web:
    image: nginx
    entrypoint: /docker-entrypoint.sh
    command: [nginx, -g, "daemon off;"]
    env: { N: 1, B: true, F: 1.5, S: "" }
    ports: [80, "443/tcp", 53/udp]
    health: { cmd: "curl -f localhost", interval: 500ms, timeout: 1m30s }
    cache: { a: /a, b: /b/ }
    instance: 2
    user: 1000
    workdir: /srv
    stop_timeout: 0
jobs:
  j:
    image: alpine
    run: echo hi
    user: nobody
    workdir: /tmp
    bind: { Web.Local: web }
"#);
        let web = &up.services["web"];
        assert_eq!(web.entrypoint, Some(strings(&["/docker-entrypoint.sh"])));
        assert_eq!(web.command, Some(strings(&["nginx", "-g", "daemon off;"])));
        assert_eq!(
            web.env,
            map(&[("N", "1"), ("B", "true"), ("F", "1.5"), ("S", "")])
        );
        assert_eq!(
            web.ports,
            vec![
                tcp(80),
                tcp(443),
                PortSpec {
                    port: 53,
                    protocol: netns::Protocol::Udp
                }
            ]
        );
        assert_eq!(
            web.health,
            Health {
                cmd: Some(strings(&["sh", "-c", "curl -f localhost"])),
                interval: Duration::from_millis(500),
                timeout: Duration::from_secs(90),
            }
        );
        assert_eq!(web.cache, map(&[("a", "/a"), ("b", "/b/")]));
        assert_eq!(web.instance.as_deref(), Some("2"));
        assert_eq!(web.user.as_deref(), Some("1000"));
        assert_eq!(web.workdir.as_deref(), Some("/srv"));
        assert_eq!(web.stop_timeout, Duration::ZERO);
        let j = &up.jobs["j"];
        assert_eq!(j.run, Some(strings(&["sh", "-c", "echo hi"])));
        assert_eq!(j.user.as_deref(), Some("nobody"));
        assert_eq!(j.workdir.as_deref(), Some("/tmp"));
        assert_eq!(j.bind, map(&[("web.local", "web")]));
    }

    #[test]
    fn only_services_or_only_jobs() {
        assert!(ok("services:\n  a: { image: x }\n").jobs.is_empty());
        let up = ok("jobs:\n  a: { image: x }\n");
        assert!(up.services.is_empty());
        assert_eq!(up.jobs["a"].run, None);
    }

    #[test]
    fn anchors_and_aliases() {
        let up = ok("services:\n  a: &s { image: x, ports: [1] }\n  b: *s\n");
        assert_eq!(up.services["a"], up.services["b"]);
    }

    #[test]
    fn unknown_keys() {
        fails(
            "services: {}\nvolumes: {}\n",
            "2:1",
            "volumes: unknown key (expected one of services, jobs)",
        );
        fails(
            "services:\n  db:\n    image: x\n    portz: [1]\n",
            "4:5",
            "services.db.portz: unknown key (expected one of image, entrypoint, command, env, \
             ports, health, cache, instance, user, workdir, stop_timeout)",
        );
        fails(
            "services:\n  db:\n    image: x\n    health: { cmd: x, retries: 3 }\n",
            "4:23",
            "services.db.health.retries: unknown key (expected one of cmd, interval, timeout)",
        );
        fails(
            "jobs:\n  t:\n    image: x\n    command: [a]\n",
            "4:5",
            "jobs.t.command: unknown key (expected one of image, bind, env, run, workdir, user)",
        );
    }

    #[test]
    fn wrong_types() {
        let svc = |field: &str| format!("services:\n  db:\n    image: x\n    {field}\n");
        fails(
            &svc("env: [A=1]"),
            "4:10",
            "services.db.env: expected a mapping",
        );
        fails(
            &svc("env: { A: [1] }"),
            "4:15",
            "services.db.env.A: expected a string",
        );
        fails(
            &svc("env: { A: }"),
            "4:13",
            "services.db.env.A: expected a string",
        );
        fails(
            &svc("entrypoint: { a: b }"),
            "4:17",
            "services.db.entrypoint: expected a list",
        );
        fails(
            &svc("command: [[a]]"),
            "4:15",
            "services.db.command[0]: expected a string",
        );
        fails(
            &svc("ports: 3306"),
            "4:12",
            "services.db.ports: expected a list of ports",
        );
        fails(
            &svc("health: yes"),
            "4:13",
            "services.db.health: expected a mapping",
        );
        fails(
            &svc("health: { cmd: {} }"),
            "4:20",
            "services.db.health.cmd: expected a list",
        );
        fails(
            &svc("health: { cmd: [] }"),
            "4:20",
            "services.db.health.cmd: the command is empty",
        );
        fails(
            &svc("cache: [a]"),
            "4:12",
            "services.db.cache: expected a mapping",
        );
        fails(
            &svc("cache: { a: 1 }"),
            "4:17",
            "services.db.cache.a: \"1\" is not an absolute",
        );
        fails(
            &svc("instance: [1]"),
            "4:15",
            "services.db.instance: expected a string",
        );
        fails(
            &svc("user: {}"),
            "4:11",
            "services.db.user: expected a string",
        );
        fails(
            &svc("workdir: srv"),
            "4:14",
            "services.db.workdir: \"srv\" is not an absolute",
        );
        fails(
            &svc("stop_timeout: [1]"),
            "4:19",
            "services.db.stop_timeout: expected a duration",
        );
        fails(
            "services:\n  db:\n    image: [x]\n",
            "3:12",
            "services.db.image: expected a string",
        );
        fails(
            "services:\n  db:\n    image: ''\n",
            "3:12",
            "services.db.image: must not be empty",
        );
        fails(
            "services:\n  db: x\n",
            "2:7",
            "services.db: expected a mapping of service settings",
        );
        fails("services: [db]\n", "1:11", "services: expected a mapping");
        fails("jobs:\n", "1:5", "jobs: expected a mapping");
        let job = |field: &str| format!("jobs:\n  t:\n    image: x\n    {field}\n");
        fails(
            &job("bind: [db]"),
            "4:11",
            "jobs.t.bind: expected a mapping",
        );
        fails(
            &job("run: { a: b }"),
            "4:10",
            "jobs.t.run: expected a list of strings or a string",
        );
        fails(&job("run: []"), "4:10", "jobs.t.run: the command is empty");
        fails(&job("env: x"), "4:10", "jobs.t.env: expected a mapping");
        fails(
            &job("workdir: ~"),
            "4:14",
            "jobs.t.workdir: expected a string",
        );
        fails(&job("user: [a]"), "4:11", "jobs.t.user: expected a string");
        fails(
            "jobs:\n  t:\n    run: x\n",
            "2:3",
            "jobs.t: missing required key \"image\"",
        );
    }

    #[test]
    fn bad_ports() {
        let ports = |p: &str| format!("services:\n  db:\n    image: x\n    ports: [{p}]\n");
        for bad in [
            "abc",
            "0",
            "65536",
            "-1",
            "3306/sctp",
            "/tcp",
            "3306/",
            "80.5",
            "[80]",
        ] {
            fails(
                &ports(bad),
                "4:13",
                "services.db.ports[0]: expected a port number 1-65535 or \"PORT/tcp|udp\", got",
            );
        }
        fails(&ports("\"abc\""), "4:13", "got \"abc\"");
        fails(
            &ports("1, 2, 1/tcp"),
            "4:19",
            "services.db.ports[2]: 1/tcp is listed twice (first at ports[0])",
        );
        assert_eq!(ok(&ports("1, 1/udp, 65535")).services["db"].ports.len(), 3);
    }

    #[test]
    fn bad_durations() {
        let health = |h: &str| format!("services:\n  db:\n    image: x\n    health: {{ {h} }}\n");
        fails(
            &health("interval: 1x"),
            "4:25",
            "services.db.health.interval: expected a duration like 1s",
        );
        fails(
            &health("timeout: -1s"),
            "4:24",
            "services.db.health.timeout: expected a duration",
        );
        fails(
            &health("interval: 0s"),
            "4:25",
            "services.db.health.interval: must be more than 0",
        );
        fails(
            "services:\n  db:\n    image: x\n    stop_timeout: soon\n",
            "4:19",
            "services.db.stop_timeout: expected a duration like 1s, 500ms, 2m or 1m30s, got \"soon\"",
        );
    }

    #[test]
    fn references() {
        let base =
            "services:\n  db: { image: x }\n  kv: { image: y }\njobs:\n  test:\n    image: z\n";
        fails(
            &format!("{base}    bind: {{ db: dbx }}\n"),
            "7:17",
            "jobs.test.bind.db: service \"dbx\" is not defined (defined: db, kv)",
        );
        fails(
            "jobs:\n  t:\n    image: z\n    bind:\n      db: db\n",
            "5:11",
            "jobs.t.bind.db: service \"db\" is not defined (no services are defined)",
        );
        fails(
            &format!("{base}    bind: {{ bad_alias: db }}\n"),
            "7:13",
            "jobs.test.bind.bad_alias: invalid DNS name \"bad_alias\"",
        );
        fails(
            &format!("{base}    bind: {{ DB: db, db: kv }}\n"),
            "7:21",
            "jobs.test.bind.db: alias \"db\" is bound twice",
        );
    }

    #[test]
    fn bad_names() {
        for bad in ["My-DB", "a.b", "-a", "a_b", "''"] {
            fails(
                &format!("services:\n  {bad}: {{ image: x }}\n"),
                "2:3",
                "invalid service name; use lower-case letters",
            );
        }
        fails(
            "jobs:\n  j.1: { image: x }\n",
            "2:3",
            "jobs.\"j.1\": invalid job name",
        );
        fails(
            "services:\n  a: { image: x }\njobs:\n  a: { image: x }\n",
            "4:3",
            "jobs.a: a service has the same name",
        );
        fails(
            "services:\n  db:\n    image: x\n    cache: { .v: /data }\n",
            "4:14",
            "services.db.cache.\".v\": invalid volume name \".v\"",
        );
        fails(
            "services:\n  db:\n    image: x\n    env: { \"A=B\": 1 }\n",
            "4:12",
            "services.db.env.\"A=B\": invalid variable name",
        );
    }

    #[test]
    fn bad_cache_paths() {
        let cache = |c: &str| format!("services:\n  db:\n    image: x\n    cache: {{ {c} }}\n");
        fails(
            &cache("v: data"),
            "4:17",
            "services.db.cache.v: \"data\" is not an absolute path",
        );
        fails(&cache("v: /a/../b"), "4:17", "must not contain '..'");
        fails(&cache("v: /"), "4:17", "a cache volume cannot be /");
        fails(
            &cache("v: /data, w: /data/"),
            "4:27",
            "services.db.cache.w: \"/data/\" is already the path of volume \"v\"",
        );
        fails(&cache("v: \"/a\\0b\""), "4:17", "contains a NUL character");
    }

    #[test]
    fn duplicate_keys() {
        fails(
            "services:\n  db:\n    image: x\n    image: y\n",
            "4:5",
            "services.db.image: duplicate key (first at line 3)",
        );
        fails(
            "services:\n  db: { image: x }\n  db: { image: y }\n",
            "3:3",
            "services.db: duplicate key (first at line 2)",
        );
        fails(
            "jobs: {}\njobs: {}\n",
            "2:1",
            "jobs: duplicate key (first at line 1)",
        );
    }

    #[test]
    fn document_errors() {
        fails("", "1:1", "the file is empty");
        fails("# only a comment\n", "1:1", "the file is empty");
        fails("---\n", "1:1", "the file is empty");
        fails(
            "- a\n- b\n",
            "1:1",
            "expected a mapping with services: and/or jobs:, got a list",
        );
        fails(
            "hello\n",
            "1:1",
            "expected a mapping with services: and/or jobs:, got \"hello\"",
        );
        fails("{}\n", "1:1", "neither services: nor jobs: is defined");
        fails(
            "services: {}\n---\njobs: {}\n",
            "2:1",
            "a second YAML document",
        );
        fails("services:\n  db: { image: x\n", "3:1", "YAML syntax error");
        fails(
            "services:\n  db:\n    image: x\n   bad: y\n",
            "4:4",
            "YAML syntax error",
        );
        fails("? [a]\n: b\n", "1:3", "a key must be text, got a list");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_bounded() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let e = parse(Path::new("f"), &bomb).unwrap_err().to_string();
        assert!(e.contains("too many YAML nodes"), "{e}");
        let deep = format!("services: {}{}\n", "[".repeat(100), "]".repeat(100));
        let e = parse(Path::new("f"), &deep).unwrap_err().to_string();
        assert!(e.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn load_names_a_missing_file() {
        let e = load(Path::new("./nope/rcrun.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "./nope/rcrun.yaml: no such file; write an up-file (see README) or pass -f FILE"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rcrun.yaml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap().path, path);
        std::fs::write(&path, "services:\n  db: {}\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2:3: services.db: missing", path.display())),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("1s", ms(1000)),
            ("500ms", ms(500)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("0.25m", ms(15_000)),
            ("10", ms(10_000)),
            ("2.5", ms(2500)),
            ("0", Duration::ZERO),
            ("1.0000000019s", Duration::new(1, 1)),
        ] {
            assert_eq!(parse_duration(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "s",
            "ms",
            "-1s",
            "1x",
            "1 s",
            " 1s",
            "1m30",
            "1.2.3s",
            ".s",
            "1S",
            "1sm",
            "99999999999999999999s",
            "18446744073709551615h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
