//! The record table: who holds which name and address, and what a client sees.
//!
//! Writers keep a [`State`] behind a mutex and publish an immutable [`Table`]
//! built from it; queries read the table without locking.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{DOMAIN_SUFFIX, Endpoint, NetworkInfo, network_domain};

/// What the writers change; the table is rebuilt from it on every change.
#[derive(Default)]
pub(crate) struct State {
    pub networks: BTreeMap<String, NetworkInfo>,
    /// Keyed by (container, network).
    pub endpoints: BTreeMap<(String, String), Endpoint>,
}

/// Round-robin positions of one name, one per family: a stub asks A and AAAA
/// together, so a shared counter would always hand A the same parity.
#[derive(Default)]
pub(crate) struct Counters {
    v4: AtomicUsize,
    v6: AtomicUsize,
}

struct NameEntry {
    /// Indexes into `Table::endpoints`.
    holders: Vec<usize>,
    /// Kept across rebuilds so that the rotation goes on after an update.
    counters: Arc<Counters>,
}

/// One published snapshot.
#[derive(Default)]
pub(crate) struct Table {
    /// Goes up with every rebuild; the SOA serial.
    pub serial: u32,
    endpoints: Vec<Endpoint>,
    internal: HashMap<String, bool>,
    by_addr: HashMap<IpAddr, Vec<usize>>,
    by_container: HashMap<String, Vec<usize>>,
    names: HashMap<String, NameEntry>,
}

/// The networks whose names one client sees.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub networks: Vec<String>,
}

impl View {
    fn sees(&self, network: &str) -> bool {
        self.networks.iter().any(|n| n == network)
    }
}

/// The addresses of a name's holders, not yet rotated.
#[derive(Debug)]
pub(crate) struct Host {
    pub zone: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub counters: Arc<Counters>,
}

/// What the table says about one (lower-cased, no trailing dot) query name.
#[derive(Debug)]
pub(crate) enum Resolution {
    /// A name of ours.
    Host(Host),
    /// The reverse name of a visible endpoint's address: PTR targets.
    Reverse { zone: String, targets: Vec<String> },
    /// A zone apex of ours (a visible network's domain, or the suffix itself).
    Apex { zone: String },
    /// Under our suffix but nothing there (for this client).
    NxDomain { zone: String },
    /// Not ours.
    Unknown,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Counters {
    /// `list` starting at this name's next position for the family.
    pub fn rotate_v4(&self, list: &mut [Ipv4Addr]) {
        rotate(list, &self.v4);
    }
    pub fn rotate_v6(&self, list: &mut [Ipv6Addr]) {
        rotate(list, &self.v6);
    }
}

fn rotate<T>(list: &mut [T], counter: &AtomicUsize) {
    if list.len() > 1 {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        list.rotate_left(n % list.len());
    }
}

impl Table {
    pub fn build(state: &State, old: &Table) -> Table {
        let mut table = Table {
            serial: old.serial.wrapping_add(1),
            ..Table::default()
        };
        for (name, info) in &state.networks {
            table.internal.insert(name.clone(), info.internal);
        }
        for (i, endpoint) in state.endpoints.values().enumerate() {
            table.endpoints.push(endpoint.clone());
            for addr in &endpoint.addresses {
                push_unique(table.by_addr.entry(addr.to_canonical()).or_default(), i);
            }
            table
                .by_container
                .entry(endpoint.container.clone())
                .or_default()
                .push(i);
            for name in &endpoint.names {
                let entry = table
                    .names
                    .entry(name.as_str().to_string())
                    .or_insert_with(|| NameEntry {
                        holders: Vec::new(),
                        counters: old
                            .names
                            .get(name.as_str())
                            .map(|e| e.counters.clone())
                            .unwrap_or_default(),
                    });
                push_unique(&mut entry.holders, i);
            }
        }
        table
    }

    /// A client whose address is an endpoint's sees every network of that
    /// container; any other client sees the network of the socket it asked on.
    pub fn view(&self, source: IpAddr, socket_network: &str) -> View {
        let mut networks: Vec<String> = Vec::new();
        for &i in self
            .by_addr
            .get(&source.to_canonical())
            .into_iter()
            .flatten()
        {
            let container = &self.endpoints[i].container;
            for &j in &self.by_container[container] {
                let network = &self.endpoints[j].network;
                if !networks.contains(network) {
                    networks.push(network.clone());
                }
            }
        }
        if networks.is_empty() {
            networks.push(socket_network.to_string());
        }
        View { networks }
    }

    /// Whether names outside ours may be forwarded for this view: only when it
    /// reaches at least one network with egress. A network without
    /// [`NetworkInfo`] counts as not internal.
    pub fn may_forward(&self, view: &View) -> bool {
        view.networks
            .iter()
            .any(|n| !self.internal.get(n).copied().unwrap_or(false))
    }

    pub fn resolve(&self, qname: &str, view: &View) -> Resolution {
        if qname == DOMAIN_SUFFIX {
            return Resolution::Apex {
                zone: DOMAIN_SUFFIX.to_string(),
            };
        }
        if let Some(rest) = qname.strip_suffix(DOMAIN_SUFFIX)
            && let Some(rest) = rest.strip_suffix('.')
        {
            return self.resolve_internal(rest, view);
        }
        if let Some(addr) = parse_reverse(qname) {
            return self.resolve_reverse(addr, view);
        }
        self.lookup(qname, view, None)
            .map_or(Resolution::Unknown, Resolution::Host)
    }

    /// `rest` is the query name without ".rcrun.internal": "NAME.NETWORK" or
    /// "NETWORK". Network names may hold dots, so every visible network is tried.
    fn resolve_internal(&self, rest: &str, view: &View) -> Resolution {
        let mut zone = None;
        let mut found: Option<Host> = None;
        for network in &view.networks {
            let label = network.to_ascii_lowercase();
            if rest == label {
                return Resolution::Apex {
                    zone: network_domain(network),
                };
            }
            let Some(name) = rest
                .strip_suffix(label.as_str())
                .and_then(|r| r.strip_suffix('.'))
            else {
                continue;
            };
            zone.get_or_insert_with(|| network_domain(network));
            match (&mut found, self.lookup(name, view, Some(network))) {
                (Some(all), Some(host)) => {
                    extend_unique(&mut all.v4, host.v4);
                    extend_unique(&mut all.v6, host.v6);
                }
                (None, host) => found = host,
                (_, None) => {}
            }
        }
        match found {
            Some(host) => Resolution::Host(host),
            None => Resolution::NxDomain {
                zone: zone.unwrap_or_else(|| DOMAIN_SUFFIX.to_string()),
            },
        }
    }

    /// The holders of `name` on the visible networks (or on `only`).
    fn lookup(&self, name: &str, view: &View, only: Option<&str>) -> Option<Host> {
        let entry = self.names.get(name)?;
        let mut zone = None;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for &i in &entry.holders {
            let endpoint = &self.endpoints[i];
            if !view.sees(&endpoint.network) || only.is_some_and(|n| n != endpoint.network) {
                continue;
            }
            zone.get_or_insert_with(|| network_domain(&endpoint.network));
            for addr in &endpoint.addresses {
                match addr.to_canonical() {
                    IpAddr::V4(a) => push_unique(&mut v4, a),
                    IpAddr::V6(a) => push_unique(&mut v6, a),
                }
            }
        }
        Some(Host {
            zone: zone?,
            v4,
            v6,
            counters: entry.counters.clone(),
        })
    }

    /// An address of a visible endpoint answers with that endpoint's primary
    /// name; any other address is not ours (forwarded like any name).
    fn resolve_reverse(&self, addr: IpAddr, view: &View) -> Resolution {
        let mut zone = None;
        let mut targets = Vec::new();
        for &i in self.by_addr.get(&addr.to_canonical()).into_iter().flatten() {
            let endpoint = &self.endpoints[i];
            let Some(primary) = endpoint.names.first() else {
                continue;
            };
            if !view.sees(&endpoint.network) {
                continue;
            }
            let domain = network_domain(&endpoint.network);
            push_unique(&mut targets, format!("{primary}.{domain}."));
            zone.get_or_insert(domain);
        }
        match zone {
            Some(zone) => Resolution::Reverse { zone, targets },
            None => Resolution::Unknown,
        }
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn extend_unique<T: PartialEq>(list: &mut Vec<T>, items: Vec<T>) {
    for item in items {
        push_unique(list, item);
    }
}

/// The address of a reverse name: "d.c.b.a.in-addr.arpa" or the 32 nibbles of
/// "….ip6.arpa" (lower-cased, no trailing dot). Partial names are not addresses.
pub(crate) fn parse_reverse(qname: &str) -> Option<IpAddr> {
    if let Some(rest) = qname.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        for (i, label) in labels.iter().rev().enumerate() {
            // No leading zeros: "01" names nothing.
            if label.is_empty() || (label.len() > 1 && label.starts_with('0')) {
                return None;
            }
            if !label.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            octets[i] = label.parse().ok()?;
        }
        return Some(IpAddr::from(octets));
    }
    if let Some(rest) = qname.strip_suffix(".ip6.arpa") {
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 32 {
            return None;
        }
        let mut value: u128 = 0;
        for label in labels.iter().rev() {
            if label.len() != 1 {
                return None;
            }
            value = value << 4 | u128::from(label.chars().next()?.to_digit(16)?);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// The reverse (PTR) name of an address, with a trailing dot:
/// "5.0.89.10.in-addr.arpa." or the 32 nibbles under "ip6.arpa.".
pub fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(a) => {
            let mut out = String::with_capacity(73);
            for byte in a.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            out.push_str("ip6.arpa.");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Name;

    fn ep(container: &str, network: &str, names: &[&str], addrs: &[&str]) -> Endpoint {
        Endpoint {
            container: container.into(),
            network: network.into(),
            names: names.iter().map(|n| n.parse::<Name>().unwrap()).collect(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn table(endpoints: Vec<Endpoint>, internal: &[&str]) -> Table {
        let mut state = State::default();
        for n in internal {
            state.networks.insert(
                n.to_string(),
                NetworkInfo {
                    name: n.to_string(),
                    internal: true,
                },
            );
        }
        for e in endpoints {
            state
                .endpoints
                .insert((e.container.clone(), e.network.clone()), e);
        }
        Table::build(&state, &Table::default())
    }

    fn view(networks: &[&str]) -> View {
        View {
            networks: networks.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn v4(r: Resolution) -> Vec<Ipv4Addr> {
        match r {
            Resolution::Host(h) => h.v4,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reverse_names() {
        for addr in [
            "10.89.0.5",
            "0.0.0.0",
            "255.1.20.3",
            "fd00::5",
            "2001:db8::1:abcd",
            "::",
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            let name = reverse_name(addr);
            assert_eq!(
                parse_reverse(name.trim_end_matches('.')),
                Some(addr),
                "{name}"
            );
        }
        assert_eq!(
            reverse_name("10.89.0.5".parse().unwrap()),
            "5.0.89.10.in-addr.arpa."
        );
        assert!(reverse_name("fd00::5".parse().unwrap()).starts_with("5.0.0.0.0.0.0.0."));
        for bad in [
            "0.89.10.in-addr.arpa",
            "1.5.0.89.10.in-addr.arpa",
            "05.0.89.10.in-addr.arpa",
            "256.0.89.10.in-addr.arpa",
            "a.0.89.10.in-addr.arpa",
            "..89.10.in-addr.arpa",
            "in-addr.arpa",
            "0.0.ip6.arpa",
            "5.0.89.10",
        ] {
            assert_eq!(parse_reverse(bad), None, "{bad}");
        }
        let nibbles = reverse_name("fd00::5".parse().unwrap());
        let bad = nibbles.replacen("5.", "g.", 1);
        assert_eq!(parse_reverse(bad.trim_end_matches('.')), None);
    }

    #[test]
    fn views() {
        let t = table(
            vec![
                ep("c1", "front", &["web"], &["10.1.0.2"]),
                ep("c1", "back", &["web"], &["10.2.0.2"]),
                ep("c2", "back", &["db"], &["10.2.0.3"]),
            ],
            &["back"],
        );
        // Either address of c1 sees both of its networks.
        assert_eq!(
            t.view("10.1.0.2".parse().unwrap(), "x"),
            view(&["back", "front"])
        );
        assert_eq!(
            t.view("10.2.0.2".parse().unwrap(), "x"),
            view(&["back", "front"])
        );
        assert_eq!(
            t.view("10.2.0.3".parse().unwrap(), "front"),
            view(&["back"])
        );
        // v4-mapped sources (a dual-stack socket) are the same client.
        assert_eq!(
            t.view("::ffff:10.2.0.3".parse().unwrap(), "front"),
            view(&["back"])
        );
        // Unknown sources see the socket's network.
        assert_eq!(
            t.view("10.1.0.1".parse().unwrap(), "front"),
            view(&["front"])
        );

        assert!(t.may_forward(&view(&["back", "front"])));
        assert!(!t.may_forward(&view(&["back"])));
        assert!(t.may_forward(&view(&["unknown"])));
    }

    #[test]
    fn names_and_visibility() {
        let t = table(
            vec![
                ep(
                    "c1",
                    "front",
                    &["web", "0123456789ab", "www.example"],
                    &["10.1.0.2", "fd01::2"],
                ),
                ep("c2", "back", &["db"], &["10.2.0.3"]),
                ep("c3", "back", &["web"], &["10.2.0.4"]),
            ],
            &[],
        );
        let front = view(&["front"]);
        let both = view(&["front", "back"]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(v4(t.resolve("web", &front)), [ip("10.1.0.2")]);
        assert_eq!(v4(t.resolve("0123456789ab", &front)), [ip("10.1.0.2")]);
        assert_eq!(v4(t.resolve("www.example", &front)), [ip("10.1.0.2")]);
        assert_eq!(
            v4(t.resolve("web.front.rcrun.internal", &front)),
            [ip("10.1.0.2")]
        );
        // Bare names are the union of the visible networks; qualified ones, one network.
        assert_eq!(
            v4(t.resolve("web", &both)),
            [ip("10.1.0.2"), ip("10.2.0.4")]
        );
        assert_eq!(
            v4(t.resolve("web.back.rcrun.internal", &both)),
            [ip("10.2.0.4")]
        );
        // Names of networks the client is not on do not exist for it.
        assert!(matches!(t.resolve("db", &front), Resolution::Unknown));
        match t.resolve("db.back.rcrun.internal", &front) {
            Resolution::NxDomain { zone } => assert_eq!(zone, "rcrun.internal"),
            other => panic!("{other:?}"),
        }
        match t.resolve("nope.front.rcrun.internal", &front) {
            Resolution::NxDomain { zone } => assert_eq!(zone, "front.rcrun.internal"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.resolve("front.rcrun.internal", &front),
            Resolution::Apex { .. }
        ));
        assert!(matches!(
            t.resolve("back.rcrun.internal", &front),
            Resolution::NxDomain { .. }
        ));
        assert!(matches!(
            t.resolve("rcrun.internal", &front),
            Resolution::Apex { .. }
        ));
        match t.resolve("web", &front) {
            Resolution::Host(h) => {
                assert_eq!(h.zone, "front.rcrun.internal");
                assert_eq!(h.v6, ["fd01::2".parse::<Ipv6Addr>().unwrap()]);
            }
            other => panic!("{other:?}"),
        }
        // Reverse: visible endpoints only.
        match t.resolve("2.0.1.10.in-addr.arpa", &front) {
            Resolution::Reverse { targets, .. } => {
                assert_eq!(targets, ["web.front.rcrun.internal."]);
            }
            other => panic!("{other:?}"),
        }
        let v6 = reverse_name("fd01::2".parse().unwrap());
        assert!(matches!(
            t.resolve(v6.trim_end_matches('.'), &front),
            Resolution::Reverse { .. }
        ));
        assert!(matches!(
            t.resolve("3.0.2.10.in-addr.arpa", &front),
            Resolution::Unknown
        ));
    }

    #[test]
    fn dotted_network_names() {
        let t = table(
            vec![
                ep("c1", "b.c", &["a"], &["10.1.0.2"]),
                ep("c2", "c", &["a.b"], &["10.1.0.3"]),
            ],
            &[],
        );
        let both = view(&["b.c", "c"]);
        let got = v4(t.resolve("a.b.c.rcrun.internal", &both));
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn rotation_survives_rebuilds() {
        let mut state = State::default();
        for i in 1..=3 {
            let e = ep(&format!("c{i}"), "n", &["svc"], &[&format!("10.0.0.{i}")]);
            state.endpoints.insert((e.container.clone(), "n".into()), e);
        }
        let t1 = Table::build(&state, &Table::default());
        let first = |t: &Table| match t.resolve("svc", &view(&["n"])) {
            Resolution::Host(mut h) => {
                h.counters.rotate_v4(&mut h.v4);
                h.v4[0]
            }
            other => panic!("{other:?}"),
        };
        let a = first(&t1);
        let t2 = Table::build(&state, &t1);
        let b = first(&t2);
        let c = first(&t2);
        assert_eq!(t2.serial, t1.serial + 1);
        let mut seen = vec![a, b, c];
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "each query starts at the next holder");
    }
}
