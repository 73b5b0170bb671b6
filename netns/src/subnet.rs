//! Subnets and address management: parsing, overlap checks, the automatic pool, and
//! picking a free address. Pure logic; the caller keeps the leases transactionally.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IP prefix in canonical form (host bits zero), e.g. `10.89.3.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubnetError {
    #[error("{0:?} is not a subnet: write it as ADDRESS/PREFIX, e.g. 10.89.7.0/24")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has host bits set: did you mean {canonical}?")]
    HostBits { text: String, canonical: Subnet },
    #[error(
        "subnet {0} is too small: it needs room for a gateway and containers (at most /30 for IPv4, /126 for IPv6)"
    )]
    TooSmall(Subnet),
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn from_bits(v4: bool, value: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

impl Subnet {
    /// A subnet from an address and prefix; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, SubnetError> {
        if prefix > width(addr) {
            return Err(SubnetError::Prefix {
                text: format!("{addr}/{prefix}"),
                max: width(addr),
            });
        }
        let masked = bits(addr) & mask(width(addr), prefix);
        Ok(Subnet {
            addr: from_bits(addr.is_ipv4(), masked),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn host_bits(&self) -> u8 {
        width(self.addr) - self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && bits(ip) & mask(width(ip), self.prefix) == bits(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        if self.is_ipv4() != other.is_ipv4() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        let m = mask(width(self.addr), shorter);
        bits(self.addr) & m == bits(other.addr) & m
    }

    /// The `n`th address of the subnet (0 = the network address).
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let size = self.size();
        (n < size).then(|| from_bits(self.is_ipv4(), bits(self.addr) + n))
    }

    fn size(&self) -> u128 {
        if self.host_bits() >= 128 {
            u128::MAX
        } else {
            1u128 << self.host_bits()
        }
    }

    /// Usable host addresses: without the network address, and for IPv4 without
    /// the broadcast address.
    fn host_range(&self) -> (u128, u128) {
        let size = self.size();
        if self.is_ipv4() {
            (1, size.saturating_sub(2))
        } else {
            (1, size - 1)
        }
    }

    /// The default gateway: the first host address.
    pub fn default_gateway(&self) -> IpAddr {
        from_bits(self.is_ipv4(), bits(self.addr) + 1)
    }

    /// Checks `ip` may be given to a host on this subnet (not the network or
    /// broadcast address).
    pub fn is_host(&self, ip: IpAddr) -> bool {
        if !self.contains(ip) {
            return false;
        }
        let offset = bits(ip) - bits(self.addr);
        let (first, last) = self.host_range();
        offset >= first && offset <= last
    }

    /// Enough room for a gateway and at least one container.
    fn check_size(self) -> Result<Self, SubnetError> {
        if self.host_bits() < 2 {
            return Err(SubnetError::TooSmall(self));
        }
        Ok(self)
    }
}

fn mask(width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all & !((1u128 << (width - prefix)) - 1) & all
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    /// Parses strictly: host bits must be zero (as `docker network create` insists).
    fn from_str(text: &str) -> Result<Self, SubnetError> {
        let syntax = || SubnetError::Syntax(text.to_string());
        let (addr, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let subnet = Subnet::new(addr, prefix).map_err(|e| match e {
            SubnetError::Prefix { max, .. } => SubnetError::Prefix {
                text: text.to_string(),
                max,
            },
            other => other,
        })?;
        if subnet.addr != addr {
            return Err(SubnetError::HostBits {
                text: text.to_string(),
                canonical: subnet,
            });
        }
        subnet.check_size()
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where automatic subnets come from: /24s of 10.89.0.0/16 then 10.90.0.0/16
/// (podman's neighbourhood, clear of 10.0.2.0/24, the egress link), and /64s of
/// one ULA prefix for IPv6.
const POOL_V4: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(10, 89, 0, 0), 16),
    (Ipv4Addr::new(10, 90, 0, 0), 16),
];
const POOL_V6: Ipv6Addr = Ipv6Addr::new(0xfd8d, 0x1f3e, 0xa1c7, 0, 0, 0, 0, 0);

/// Subnets rcrun never hands out or accepts: the egress link's.
pub fn reserved() -> Vec<Subnet> {
    vec![Subnet::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 0)), 24).expect("valid")]
}

/// Picks the first pool subnet that overlaps none of `avoid` (other networks,
/// the host's routes, reserved ranges).
pub fn pick(ipv6: bool, avoid: &[Subnet]) -> Option<Subnet> {
    let free = |s: &Subnet| !avoid.iter().any(|a| a.overlaps(s));
    if ipv6 {
        let base = u128::from(POOL_V6);
        return (0..=u16::MAX as u128)
            .map(|n| Subnet::new(IpAddr::V6(Ipv6Addr::from(base | (n << 64))), 64).expect("valid"))
            .find(free);
    }
    POOL_V4.iter().find_map(|(base, _)| {
        (0..=255u32)
            .map(|n| {
                let addr = Ipv4Addr::from(u32::from(*base) | (n << 8));
                Subnet::new(IpAddr::V4(addr), 24).expect("valid")
            })
            .find(free)
    })
}

/// The lowest free host address of `subnet`, skipping the gateway and `taken`.
/// IPv6 subnets are searched only in their first 2^16 addresses.
pub fn allocate(subnet: &Subnet, gateway: IpAddr, taken: &[IpAddr]) -> Option<IpAddr> {
    let (first, last) = subnet.host_range();
    let last = last.min(first + u16::MAX as u128);
    (first..=last)
        .filter_map(|n| subnet.nth(n))
        .find(|ip| *ip != gateway && !taken.contains(ip))
}

/// The host's routes (destinations) from /proc/net/route and /proc/net/ipv6_route
/// of the caller's network namespace, default routes excluded.
pub fn host_routes() -> Vec<Subnet> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        out.extend(parse_route_v4(&text));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_route_v6(&text));
    }
    out
}

fn parse_route_v4(text: &str) -> Vec<Subnet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the network-order bytes as a native-endian number.
            let dest = Ipv4Addr::from(dest.to_ne_bytes());
            let prefix = u32::from_be_bytes(mask.to_ne_bytes()).leading_ones() as u8;
            (prefix > 0).then(|| Subnet::new(IpAddr::V4(dest), prefix).ok())?
        })
        .collect()
}

fn parse_route_v6(text: &str) -> Vec<Subnet> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u128::from_str_radix(f.first()?, 16).ok()?;
            let prefix = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let dest = IpAddr::V6(Ipv6Addr::from(dest));
            let link_local = Subnet::new("fe80::".parse().expect("valid"), 10).expect("valid");
            (prefix > 0 && !link_local.contains(dest) && f.last() != Some(&"lo"))
                .then(|| Subnet::new(dest, prefix).ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_strictly() {
        assert_eq!(s("10.89.3.0/24").to_string(), "10.89.3.0/24");
        assert_eq!(s("fd00:1::/64").to_string(), "fd00:1::/64");
        assert!(matches!(
            "10.89.3.1/24".parse::<Subnet>(),
            Err(SubnetError::HostBits { .. })
        ));
        assert!(matches!(
            "10.89.3.0/33".parse::<Subnet>(),
            Err(SubnetError::Prefix { max: 32, .. })
        ));
        for bad in [
            "10.89.3.0",
            "10.89.3.0/",
            "x/24",
            "10.89.3.0/+4",
            "10.0.0.0/-1",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(SubnetError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(SubnetError::TooSmall(_))
        ));
        assert!("10.0.0.0/30".parse::<Subnet>().is_ok());
    }

    #[test]
    fn overlap_and_contains() {
        assert!(s("10.89.0.0/16").overlaps(&s("10.89.7.0/24")));
        assert!(s("10.89.7.0/24").overlaps(&s("10.89.0.0/16")));
        assert!(!s("10.89.7.0/24").overlaps(&s("10.89.8.0/24")));
        assert!(!s("10.89.7.0/24").overlaps(&s("fd00::/8")));
        assert!(s("10.89.7.0/24").contains("10.89.7.200".parse().unwrap()));
        assert!(!s("10.89.7.0/24").contains("10.89.8.1".parse().unwrap()));
        let net = s("10.89.7.0/24");
        assert!(!net.is_host("10.89.7.0".parse().unwrap()));
        assert!(!net.is_host("10.89.7.255".parse().unwrap()));
        assert!(net.is_host("10.89.7.254".parse().unwrap()));
        assert_eq!(net.default_gateway().to_string(), "10.89.7.1");
    }

    #[test]
    fn picks_around_others_and_host_routes() {
        assert_eq!(pick(false, &[]).unwrap(), s("10.89.0.0/24"));
        let avoid = [s("10.89.0.0/24"), s("10.89.1.0/24"), s("10.89.2.128/25")];
        assert_eq!(pick(false, &avoid).unwrap(), s("10.89.3.0/24"));
        // A host route over the whole first pool pushes into the second.
        assert_eq!(
            pick(false, &[s("10.89.0.0/16")]).unwrap(),
            s("10.90.0.0/24")
        );
        assert!(pick(false, &[s("10.0.0.0/8")]).is_none());
        let v6 = pick(true, &[]).unwrap();
        assert_eq!(v6.to_string(), "fd8d:1f3e:a1c7::/64");
        assert_eq!(
            pick(true, &[v6]).unwrap().to_string(),
            "fd8d:1f3e:a1c7:1::/64"
        );
    }

    #[test]
    fn allocates_lowest_free() {
        let net = s("10.89.7.0/29");
        let gw = net.default_gateway();
        let a: IpAddr = "10.89.7.2".parse().unwrap();
        assert_eq!(allocate(&net, gw, &[]), Some(a));
        let taken: Vec<IpAddr> = (2..=6)
            .map(|n| format!("10.89.7.{n}").parse().unwrap())
            .collect();
        assert_eq!(allocate(&net, gw, &taken), None, "broadcast is never given");
        assert_eq!(
            allocate(&net, gw, &taken[1..]),
            Some(a),
            "a released address is reused"
        );
        let v6 = s("fd00::/64");
        assert_eq!(
            allocate(&v6, v6.default_gateway(), &[])
                .unwrap()
                .to_string(),
            "fd00::2"
        );
    }

    #[test]
    fn reads_proc_route_formats() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4), vec![s("192.0.2.0/24")]);
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        assert_eq!(parse_route_v6(v6), vec![s("fd00::/64")]);
    }
}
