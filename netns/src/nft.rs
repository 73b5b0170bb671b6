//! rcrun's firewall, installed into the current thread's network namespace by speaking
//! nf_tables netlink directly (no `nft` binary at run time).
//!
//! [`apply`] replaces the table `inet rcrun` in one atomic batch:
//!
//! ```text
//! table inet rcrun {
//!     chain forward {
//!         type filter hook forward priority 0; policy accept;
//!         iifname B oifname B accept                        # each network B
//!         ip saddr A ip daddr HG accept                     # each v4 A in host_access, if host_gateway
//!         ip daddr HG drop                                  # if host_gateway
//!         iifname B oifname E accept                        # each non-internal B, if egress E
//!         iifname E oifname B ct state established,related accept
//!         iifname "rcbr*" drop
//!         oifname "rcbr*" drop
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority 100; policy accept;
//!         ip saddr S oifname E masquerade                   # each subnet S of each non-internal network
//!     }
//! }
//! ```
//!
//! The last two forward rules isolate networks from each other and keep internal networks
//! off the egress; they rely on every bridge being named `rcbr…`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, connect, recv,
    send, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// The firewall of the infra namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Egress interface in this namespace, or None when there is no egress.
    pub egress: Option<String>,
    pub networks: Vec<NetworkRules>,
    /// Address (reached via egress) that leads to the host's loopback, e.g. 10.0.2.2; None = not offered.
    pub host_gateway: Option<Ipv4Addr>,
    /// Container addresses allowed to reach host_gateway.
    pub host_access: Vec<IpAddr>,
}

/// One rcrun network: its bridge and address ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRules {
    /// The bridge's interface name (`rcbr…`), at most 15 bytes.
    pub bridge: String,
    /// An internal network has no egress.
    pub internal: bool,
    /// v4 and/or v6 prefixes, masqueraded on the egress unless internal.
    pub subnets: Vec<(IpAddr, u8)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid subnet {addr}/{prefix}: prefix longer than the address")]
    InvalidSubnet { addr: IpAddr, prefix: u8 },
    /// A socket call failed, or the kernel refused a message of the batch (`step` says which).
    #[error("nf_tables: {step}: {errno}")]
    Netlink { step: String, errno: Errno },
}

/// Atomically replaces the table `inet rcrun` of the current network namespace by `rules`.
pub fn apply(rules: &Ruleset) -> Result<(), NftError> {
    let batch = apply_batch(rules, 1)?;
    run_batch(&batch)
}

/// Deletes the table `inet rcrun` of the current network namespace, if there is one.
pub fn remove() -> Result<(), NftError> {
    run_batch(&remove_batch(1))
}

// ---- uapi constants (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h) ----

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 1 << 15;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_SOCKET_KEY: u16 = 1;
const NFTA_SOCKET_DREG: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_MARK: u32 = 3;
const NFT_SOCKET_TRANSPARENT: u32 = 0;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CT_STATE: u32 = 0;
/// NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED); ct state is a
/// host-endian u32 in its register.
const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);

/// The mark of packets for transparent sockets (replies to published-port
/// connections opened with the client's address); the infra routes it locally.
pub const TRANSPARENT_MARK: u32 = 0x5243;

const IFNAMSIZ: usize = 16;
/// Interface names matched with a trailing `*`, as nft does: cmp over the prefix only.
const BRIDGE_PREFIX: &str = "rcbr";

const TABLE: &str = "rcrun";
const PREROUTING: &str = "prerouting";
const FORWARD: &str = "forward";
const POSTROUTING: &str = "postrouting";
/// How long to wait for the kernel's acks before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

// ---- validation ----

/// Checks an interface name the way the kernel's dev_valid_name does.
fn validate_name(name: &str) -> Result<(), NftError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() >= IFNAMSIZ {
        Some("longer than 15 bytes")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains(':') {
        Some("contains ':'")
    } else if name.bytes().any(|b| b.is_ascii_whitespace()) {
        Some("contains whitespace")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NftError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate(rules: &Ruleset) -> Result<(), NftError> {
    if let Some(egress) = &rules.egress {
        validate_name(egress)?;
    }
    for net in &rules.networks {
        validate_name(&net.bridge)?;
        for &(addr, prefix) in &net.subnets {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(NftError::InvalidSubnet { addr, prefix });
            }
        }
    }
    Ok(())
}

// ---- netlink message building ----

/// A buffer of netlink messages; every message and attribute starts 4-byte aligned.
#[derive(Default)]
struct NlBuf {
    buf: Vec<u8>,
}

impl NlBuf {
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Starts a message: nlmsghdr then nfgenmsg. Returns its start for `end_msg`.
    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: to the kernel
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn attr_be32(&mut self, ty: u16, value: u32) {
        self.attr(ty, &value.to_be_bytes());
    }

    /// A NUL-terminated string attribute.
    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// NFTA_DATA_VALUE inside a nest of type `ty`.
    fn data_value(&mut self, ty: u16, value: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }
}

/// One nf_tables expression; all of them work on register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Meta(u32),
    /// Network header bytes `offset..offset+len`.
    Payload {
        offset: u32,
        len: u32,
    },
    /// reg1 = (reg1 & mask) ^ 0, over mask.len() bytes.
    Bitwise(Vec<u8>),
    Cmp(u32, Vec<u8>),
    CtState,
    Verdict(u32),
    Masq,
    /// reg1 = whether the packet belongs to a transparent socket (one byte).
    SocketTransparent,
    /// reg1 = the value.
    Immediate(Vec<u8>),
    /// meta mark = reg1.
    SetMark,
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta(_) => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise(_) => "bitwise",
            Expr::Cmp(..) => "cmp",
            Expr::CtState => "ct",
            Expr::Verdict(_) | Expr::Immediate(_) => "immediate",
            Expr::Masq => "masq",
            Expr::SocketTransparent => "socket",
            Expr::SetMark => "meta",
        }
    }

    fn encode(&self, b: &mut NlBuf) {
        let elem = b.nest(NFTA_LIST_ELEM);
        b.attr_str(NFTA_EXPR_NAME, self.name());
        let data = b.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Meta(key) => {
                b.attr_be32(NFTA_META_DREG, NFT_REG_1);
                b.attr_be32(NFTA_META_KEY, *key);
            }
            Expr::Payload { offset, len } => {
                b.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
                b.attr_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
                b.attr_be32(NFTA_PAYLOAD_OFFSET, *offset);
                b.attr_be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise(mask) => {
                b.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1);
                b.attr_be32(NFTA_BITWISE_DREG, NFT_REG_1);
                b.attr_be32(NFTA_BITWISE_LEN, mask.len() as u32);
                b.data_value(NFTA_BITWISE_MASK, mask);
                b.data_value(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
            }
            Expr::Cmp(op, value) => {
                b.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
                b.attr_be32(NFTA_CMP_OP, *op);
                b.data_value(NFTA_CMP_DATA, value);
            }
            Expr::CtState => {
                b.attr_be32(NFTA_CT_DREG, NFT_REG_1);
                b.attr_be32(NFTA_CT_KEY, NFT_CT_STATE);
            }
            Expr::Verdict(code) => {
                b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let imm = b.nest(NFTA_IMMEDIATE_DATA);
                let verdict = b.nest(NFTA_DATA_VERDICT);
                b.attr_be32(NFTA_VERDICT_CODE, *code);
                b.end_nest(verdict);
                b.end_nest(imm);
            }
            Expr::Masq => {}
            Expr::SocketTransparent => {
                b.attr_be32(NFTA_SOCKET_KEY, NFT_SOCKET_TRANSPARENT);
                b.attr_be32(NFTA_SOCKET_DREG, NFT_REG_1);
            }
            Expr::Immediate(value) => {
                b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
                b.data_value(NFTA_IMMEDIATE_DATA, value);
            }
            Expr::SetMark => {
                b.attr_be32(NFTA_META_KEY, NFT_META_MARK);
                b.attr_be32(NFTA_META_SREG, NFT_REG_1);
            }
        }
        b.end_nest(data);
        b.end_nest(elem);
    }
}

/// A rule being built: its expressions and its nft-like text (for error messages).
#[derive(Default)]
struct Rule {
    exprs: Vec<Expr>,
    text: Vec<String>,
    /// The nfproto already matched, if any.
    family: Option<u8>,
}

impl Rule {
    fn ifname(mut self, key: u32, name: &str) -> Self {
        let mut value = name.as_bytes().to_vec();
        value.resize(IFNAMSIZ, 0);
        self.exprs.push(Expr::Meta(key));
        self.exprs.push(Expr::Cmp(NFT_CMP_EQ, value));
        let what = if key == NFT_META_IIFNAME {
            "iifname"
        } else {
            "oifname"
        };
        self.text.push(format!("{what} {name:?}"));
        self
    }

    fn iifname(self, name: &str) -> Self {
        self.ifname(NFT_META_IIFNAME, name)
    }

    fn oifname(self, name: &str) -> Self {
        self.ifname(NFT_META_OIFNAME, name)
    }

    /// `iifname "prefix*"` / `oifname "prefix*"`: compares the first bytes only.
    fn ifname_prefix(mut self, key: u32, prefix: &str) -> Self {
        self.exprs.push(Expr::Meta(key));
        self.exprs
            .push(Expr::Cmp(NFT_CMP_EQ, prefix.as_bytes().to_vec()));
        let what = if key == NFT_META_IIFNAME {
            "iifname"
        } else {
            "oifname"
        };
        self.text.push(format!("{what} \"{prefix}*\""));
        self
    }

    fn nfproto(&mut self, addr: &IpAddr) {
        let family = if addr.is_ipv4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        };
        if self.family != Some(family) {
            debug_assert!(self.family.is_none(), "a rule matches one family");
            self.exprs.push(Expr::Meta(NFT_META_NFPROTO));
            self.exprs.push(Expr::Cmp(NFT_CMP_EQ, vec![family]));
            self.family = Some(family);
        }
    }

    /// `ip saddr`/`ip daddr`/`ip6 saddr`/`ip6 daddr` in `addr/prefix`.
    fn addr(mut self, source: bool, addr: IpAddr, prefix: u8) -> Self {
        self.nfproto(&addr);
        let (bytes, offset, proto) = match addr {
            IpAddr::V4(a) => (a.octets().to_vec(), if source { 12 } else { 16 }, "ip"),
            IpAddr::V6(a) => (a.octets().to_vec(), if source { 8 } else { 24 }, "ip6"),
        };
        let bits = bytes.len() * 8;
        let prefix = usize::from(prefix).min(bits);
        let dir = if source { "saddr" } else { "daddr" };
        if prefix == 0 {
            // Any address of the family: the nfproto match is all there is.
            let name = if proto == "ip" { "ipv4" } else { "ipv6" };
            self.text.push(format!("meta nfproto {name}"));
            return self;
        }
        let mask: Vec<u8> = (0..bytes.len())
            .map(|i| {
                let ones = prefix.saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - ones)) as u8
            })
            .collect();
        let network: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        self.exprs.push(Expr::Payload {
            offset,
            len: bytes.len() as u32,
        });
        if prefix < bits {
            self.exprs.push(Expr::Bitwise(mask));
        }
        let shown = match addr {
            IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&network[..]).unwrap()),
            IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&network[..]).unwrap()),
        };
        self.exprs.push(Expr::Cmp(NFT_CMP_EQ, network));
        if prefix < bits {
            self.text.push(format!("{proto} {dir} {shown}/{prefix}"));
        } else {
            self.text.push(format!("{proto} {dir} {shown}"));
        }
        self
    }

    fn ct_established_related(mut self) -> Self {
        self.exprs.push(Expr::CtState);
        self.exprs.push(Expr::Bitwise(
            CT_STATE_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
        ));
        self.exprs
            .push(Expr::Cmp(NFT_CMP_NEQ, 0u32.to_ne_bytes().to_vec()));
        self.text.push("ct state established,related".into());
        self
    }

    fn verdict(mut self, code: u32) -> Self {
        self.exprs.push(Expr::Verdict(code));
        self.text
            .push(if code == NF_ACCEPT { "accept" } else { "drop" }.into());
        self
    }

    fn accept(self) -> Self {
        self.verdict(NF_ACCEPT)
    }

    fn drop(self) -> Self {
        self.verdict(NF_DROP)
    }

    fn masquerade(mut self) -> Self {
        self.exprs.push(Expr::Masq);
        self.text.push("masquerade".into());
        self
    }

    /// `socket transparent 1 meta mark set MARK`.
    fn mark_transparent(mut self, mark: u32) -> Self {
        self.exprs.extend([
            Expr::SocketTransparent,
            Expr::Cmp(NFT_CMP_EQ, vec![1]),
            Expr::Immediate(mark.to_ne_bytes().to_vec()),
            Expr::SetMark,
        ]);
        self.text
            .push(format!("socket transparent 1 meta mark set {mark:#x}"));
        self
    }
}

/// The rules of table `inet rcrun`, as (chain, rule), in order.
fn rules_of(rs: &Ruleset) -> Vec<(&'static str, Rule)> {
    let mut out = Vec::new();
    let mut forward = |r: Rule| out.push((FORWARD, r));
    for net in &rs.networks {
        forward(
            Rule::default()
                .iifname(&net.bridge)
                .oifname(&net.bridge)
                .accept(),
        );
    }
    if let Some(hg) = rs.host_gateway {
        let hg = IpAddr::V4(hg);
        for &a in rs.host_access.iter().filter(|a| a.is_ipv4()) {
            forward(
                Rule::default()
                    .addr(true, a, 32)
                    .addr(false, hg, 32)
                    .accept(),
            );
        }
        forward(Rule::default().addr(false, hg, 32).drop());
    }
    let external = || rs.networks.iter().filter(|n| !n.internal);
    if let Some(egress) = &rs.egress {
        for net in external() {
            forward(
                Rule::default()
                    .iifname(&net.bridge)
                    .oifname(egress)
                    .accept(),
            );
            forward(
                Rule::default()
                    .iifname(egress)
                    .oifname(&net.bridge)
                    .ct_established_related()
                    .accept(),
            );
        }
    }
    forward(
        Rule::default()
            .ifname_prefix(NFT_META_IIFNAME, BRIDGE_PREFIX)
            .drop(),
    );
    forward(
        Rule::default()
            .ifname_prefix(NFT_META_OIFNAME, BRIDGE_PREFIX)
            .drop(),
    );
    if let Some(egress) = &rs.egress {
        for net in external() {
            for &(addr, prefix) in &net.subnets {
                out.push((
                    POSTROUTING,
                    Rule::default()
                        .addr(true, addr, prefix)
                        .oifname(egress)
                        .masquerade(),
                ));
            }
        }
    }
    out
}

/// A batch ready to send, with what each message does (for errors).
struct Batch {
    bytes: Vec<u8>,
    /// The seq of BATCH_BEGIN: the kernel reports batch-wide failures (the commit) under it.
    begin_seq: u32,
    end_seq: u32,
    /// (seq, step) of every message inside the batch: each one is acknowledged.
    steps: Vec<(u32, String)>,
}

struct BatchBuilder {
    b: NlBuf,
    seq: u32,
    begin_seq: u32,
    steps: Vec<(u32, String)>,
}

impl BatchBuilder {
    fn new(first_seq: u32) -> Self {
        let mut b = NlBuf::default();
        let start = b.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST | NLM_F_ACK,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        b.end_msg(start);
        BatchBuilder {
            b,
            seq: first_seq + 1,
            begin_seq: first_seq,
            steps: Vec::new(),
        }
    }

    /// Adds one nf_tables message of family inet; `body` writes its attributes.
    fn msg(&mut self, ty: u16, flags: u16, step: String, body: impl FnOnce(&mut NlBuf)) {
        let start = self.b.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            NFPROTO_INET,
            0,
        );
        body(&mut self.b);
        self.b.end_msg(start);
        self.steps.push((self.seq, step));
        self.seq += 1;
    }

    fn new_table(&mut self) {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            format!("add table inet {TABLE}"),
            |b| b.attr_str(NFTA_TABLE_NAME, TABLE),
        );
    }

    fn del_table(&mut self) {
        self.msg(
            NFT_MSG_DELTABLE,
            0,
            format!("delete table inet {TABLE}"),
            |b| b.attr_str(NFTA_TABLE_NAME, TABLE),
        );
    }

    fn new_chain(&mut self, name: &str, kind: &str, hook: u32, priority: i32) {
        self.msg(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!("add chain inet {TABLE} {name} {{ type {kind} hook, priority {priority}; }}"),
            |b| {
                b.attr_str(NFTA_CHAIN_TABLE, TABLE);
                b.attr_str(NFTA_CHAIN_NAME, name);
                let h = b.nest(NFTA_CHAIN_HOOK);
                b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
                b.attr_be32(NFTA_HOOK_PRIORITY, priority as u32);
                b.end_nest(h);
                b.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                b.attr_str(NFTA_CHAIN_TYPE, kind);
            },
        );
    }

    fn new_rule(&mut self, chain: &str, rule: &Rule) {
        self.msg(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("add rule inet {TABLE} {chain} {}", rule.text.join(" ")),
            |b| {
                b.attr_str(NFTA_RULE_TABLE, TABLE);
                b.attr_str(NFTA_RULE_CHAIN, chain);
                let list = b.nest(NFTA_RULE_EXPRESSIONS);
                for e in &rule.exprs {
                    e.encode(b);
                }
                b.end_nest(list);
            },
        );
    }

    fn finish(mut self) -> Batch {
        let start = self.b.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.b.end_msg(start);
        Batch {
            bytes: self.b.buf,
            begin_seq: self.begin_seq,
            end_seq: self.seq,
            steps: self.steps,
        }
    }
}

fn apply_batch(rules: &Ruleset, first_seq: u32) -> Result<Batch, NftError> {
    validate(rules)?;
    let mut bb = BatchBuilder::new(first_seq);
    // Create-if-missing then delete, so the delete never fails; then build anew.
    bb.new_table();
    bb.del_table();
    bb.new_table();
    // mangle priority, as TPROXY setups use: before routing decides.
    bb.new_chain(PREROUTING, "filter", NF_INET_PRE_ROUTING, -150);
    bb.new_chain(FORWARD, "filter", NF_INET_FORWARD, 0);
    bb.new_chain(POSTROUTING, "nat", NF_INET_POST_ROUTING, 100);
    bb.new_rule(
        PREROUTING,
        &Rule::default().mark_transparent(TRANSPARENT_MARK),
    );
    for (chain, rule) in rules_of(rules) {
        bb.new_rule(chain, &rule);
    }
    Ok(bb.finish())
}

fn remove_batch(first_seq: u32) -> Batch {
    let mut bb = BatchBuilder::new(first_seq);
    bb.new_table();
    bb.del_table();
    bb.finish()
}

// ---- talking to the kernel ----

fn sock_err(step: &str) -> impl FnOnce(Errno) -> NftError + '_ {
    move |errno| NftError::Netlink {
        step: step.to_string(),
        errno,
    }
}

/// A netlink socket for a batch of `batch_len` bytes.
fn open_socket(batch_len: usize) -> Result<OwnedFd, NftError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(sock_err("netlink socket"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err("netlink bind"))?;
    // Connected to the kernel (port 0): no other socket can send us anything.
    connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err("netlink connect"))?;
    let timeout = TimeVal::new(ACK_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(sock_err("SO_RCVTIMEO"))?;
    // The batch goes in one datagram, which must fit the send buffer; and every message is
    // acked at once when the batch is processed (about 1 KiB of buffer each): make room for
    // both. Without CAP_NET_ADMIN in the initial user namespace the kernel caps these at
    // net.core.wmem_max and rmem_max (sendto then fails with EMSGSIZE, or reading the acks
    // with ENOBUFS); a failure here is harmless.
    let _ = setsockopt(&fd, sockopt::SndBuf, &batch_len);
    let rcvbuf = (4 << 20).max(batch_len);
    if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &rcvbuf);
    }
    Ok(fd)
}

/// One netlink message of a reply.
struct Reply<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a datagram into netlink messages.
fn parse_replies(mut data: &[u8]) -> Result<Vec<Reply<'_>>, NftError> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > data.len() {
            return Err(NftError::Netlink {
                step: format!("malformed reply ({len} bytes of {})", data.len()),
                errno: Errno::EPROTO,
            });
        }
        out.push(Reply {
            ty: u16::from_ne_bytes(data[4..6].try_into().unwrap()),
            seq: u32::from_ne_bytes(data[8..12].try_into().unwrap()),
            payload: &data[16..len],
        });
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(out)
}

fn run_batch(batch: &Batch) -> Result<(), NftError> {
    let fd = open_socket(batch.bytes.len())?;
    let n = send(fd.as_raw_fd(), &batch.bytes, MsgFlags::empty()).map_err(|errno| {
        NftError::Netlink {
            step: format!(
                "sending the batch ({} messages, {} bytes)",
                batch.steps.len() + 2,
                batch.bytes.len()
            ),
            errno,
        }
    })?;
    if n != batch.bytes.len() {
        return Err(NftError::Netlink {
            step: format!("sending the batch: {n} of {} bytes sent", batch.bytes.len()),
            errno: Errno::EMSGSIZE,
        });
    }

    let step_of = |seq: u32| {
        if seq == batch.begin_seq {
            Some("the batch as a whole (commit)".to_string())
        } else if seq == batch.end_seq {
            Some("ending the batch".to_string())
        } else {
            batch
                .steps
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, step)| step.clone())
        }
    };
    let mut pending: std::collections::BTreeSet<u32> =
        batch.steps.iter().map(|(s, _)| *s).collect();
    let mut first_error: Option<NftError> = None;
    let mut buf = vec![0u8; 64 << 10];
    // The kernel processes the whole batch inside sendto, so every ack is queued by now;
    // once all are in, non-blocking reads pick up anything that came after.
    // After an error, too: the kernel does not stop at a failed message, but does not
    // promise acks for the rest either.
    loop {
        let draining = pending.is_empty() || first_error.is_some();
        let flags = if draining {
            MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_TRUNC
        };
        let n = match recv(fd.as_raw_fd(), &mut buf, flags) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if draining => break,
            Err(Errno::ENOBUFS) => {
                return Err(NftError::Netlink {
                    step: format!(
                        "reading the acks of {} messages: they overflowed the receive buffer \
                         (net.core.rmem_max); the batch may have been committed or not",
                        batch.steps.len()
                    ),
                    errno: Errno::ENOBUFS,
                });
            }
            Err(errno) => {
                let missing = pending.iter().next().and_then(|&s| step_of(s));
                return Err(NftError::Netlink {
                    step: format!(
                        "waiting for the kernel's acks ({} missing, first: {})",
                        pending.len(),
                        missing.unwrap_or_default()
                    ),
                    errno,
                });
            }
        };
        if n > buf.len() {
            return Err(NftError::Netlink {
                step: format!("reply of {n} bytes truncated"),
                errno: Errno::EMSGSIZE,
            });
        }
        for reply in parse_replies(&buf[..n])? {
            if reply.ty != NLMSG_ERROR {
                continue;
            }
            if reply.payload.len() < 4 {
                return Err(NftError::Netlink {
                    step: "short ack".into(),
                    errno: Errno::EPROTO,
                });
            }
            let error = i32::from_ne_bytes(reply.payload[0..4].try_into().unwrap());
            pending.remove(&reply.seq);
            if error != 0 && first_error.is_none() {
                first_error = Some(NftError::Netlink {
                    step: step_of(reply.seq)
                        .unwrap_or_else(|| format!("message with unknown seq {}", reply.seq)),
                    errno: Errno::from_raw(-error),
                });
                if reply.seq == batch.begin_seq {
                    // A batch-wide failure: nothing more is coming.
                    return Err(first_error.unwrap());
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, internal: bool, subnets: &[(&str, u8)]) -> NetworkRules {
        NetworkRules {
            bridge: bridge.into(),
            internal,
            subnets: subnets
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
        }
    }

    #[test]
    fn names_are_validated() {
        for ok in ["rcbr0", "tap0", "a", "fifteen-bytes-x"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "sixteen-bytes-xx",
            "a/b",
            "a\0b",
            "a b",
            "a:1",
            ".",
            "..",
        ] {
            let err = validate_name(bad).unwrap_err();
            assert!(
                matches!(&err, NftError::InvalidName { name, .. } if name == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn invalid_names_and_subnets_are_refused() {
        // apply_batch validates exactly as apply does, without touching this namespace.
        let mut rs = Ruleset {
            egress: Some("tap/0".into()),
            ..Default::default()
        };
        let err = apply_batch(&rs, 1).err().unwrap();
        assert_eq!(
            err.to_string(),
            r#"invalid interface name "tap/0": contains '/'"#
        );

        rs.egress = Some("tap0".into());
        rs.networks = vec![net("rcbr-way-too-long", false, &[])];
        let err = apply_batch(&rs, 1).err().unwrap();
        assert!(err.to_string().contains("rcbr-way-too-long"), "{err}");

        rs.networks = vec![net("rcbr0", false, &[("10.0.0.0", 33)])];
        assert!(matches!(
            apply_batch(&rs, 1).err().unwrap(),
            NftError::InvalidSubnet { prefix: 33, .. }
        ));
        rs.networks = vec![net("rcbr0", false, &[("fd00::", 129)])];
        assert!(matches!(
            apply_batch(&rs, 1).err().unwrap(),
            NftError::InvalidSubnet { prefix: 129, .. }
        ));
        rs.networks = vec![net("rcbr0", false, &[("fd00::", 128)])];
        apply_batch(&rs, 1).unwrap();
    }

    /// A parsed netlink attribute.
    #[derive(Debug)]
    struct Attr<'a> {
        ty: u16,
        nested: bool,
        data: &'a [u8],
    }

    /// Parses attributes, checking lengths and that each starts 4-aligned.
    fn attrs(mut data: &[u8]) -> Vec<Attr<'_>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            assert!(data.len() >= 4, "attribute header cut: {data:?}");
            let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
            let ty = u16::from_ne_bytes([data[2], data[3]]);
            assert!(len >= 4 && len <= data.len(), "bad nla_len {len}");
            out.push(Attr {
                ty: ty & 0x3fff,
                nested: ty & NLA_F_NESTED != 0,
                data: &data[4..len],
            });
            let padded = len.next_multiple_of(4);
            assert!(padded <= data.len(), "attribute padding cut");
            assert!(
                data[len..padded].iter().all(|&b| b == 0),
                "non-zero padding"
            );
            data = &data[padded..];
        }
        out
    }

    fn get<'a>(attrs: &'a [Attr<'a>], ty: u16) -> &'a Attr<'a> {
        attrs
            .iter()
            .find(|a| a.ty == ty)
            .unwrap_or_else(|| panic!("no attribute {ty} in {attrs:?}"))
    }

    struct Msg<'a> {
        ty: u16,
        flags: u16,
        seq: u32,
        nfgen: [u8; 4],
        attrs: &'a [u8],
    }

    fn messages(mut data: &[u8]) -> Vec<Msg<'_>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
            assert!(
                len >= 20 && len <= data.len() && len.is_multiple_of(4),
                "nlmsg_len {len}"
            );
            out.push(Msg {
                ty: u16::from_ne_bytes([data[4], data[5]]),
                flags: u16::from_ne_bytes([data[6], data[7]]),
                seq: u32::from_ne_bytes(data[8..12].try_into().unwrap()),
                nfgen: data[16..20].try_into().unwrap(),
                attrs: &data[20..len],
            });
            data = &data[len..];
        }
        out
    }

    fn small() -> Ruleset {
        Ruleset {
            egress: Some("tap0".into()),
            networks: vec![
                net("rcbr0", false, &[("10.88.0.0", 24), ("fd00:88::", 64)]),
                net("rcbr1", true, &[("10.88.1.0", 24)]),
            ],
            host_gateway: Some("10.0.2.2".parse().unwrap()),
            host_access: vec!["10.88.0.5".parse().unwrap(), "fd00:88::5".parse().unwrap()],
        }
    }

    const RULE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;

    #[test]
    fn batch_layout() {
        let batch = apply_batch(&small(), 100).unwrap();
        let msgs = messages(&batch.bytes);
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        let t = |x: u16| (NFNL_SUBSYS_NFTABLES << 8) | x;
        // forward: 2 same-bridge, 1 host access (the v6 one is skipped), 1 hg drop,
        // 2 egress for rcbr0 only, 2 prefix drops; postrouting: 2 subnets of rcbr0.
        let mut want = vec![
            NFNL_MSG_BATCH_BEGIN,
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_DELTABLE),
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_NEWCHAIN),
            t(NFT_MSG_NEWCHAIN),
            t(NFT_MSG_NEWCHAIN),
        ];
        // the transparent-socket mark, then the ruleset's own
        want.extend([RULE; 11]);
        want.push(NFNL_MSG_BATCH_END);
        assert_eq!(types, want);

        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.seq, 100 + i as u32);
            assert_eq!(
                m.flags & (NLM_F_REQUEST | NLM_F_ACK),
                NLM_F_REQUEST | NLM_F_ACK
            );
        }
        // Batch delimiters: AF_UNSPEC, version 0, res_id = NFNL_SUBSYS_NFTABLES big-endian.
        assert_eq!(msgs[0].nfgen, [0, 0, 0, 10]);
        assert_eq!(msgs.last().unwrap().nfgen, [0, 0, 0, 10]);
        assert!(msgs[0].attrs.is_empty());
        for m in &msgs[1..msgs.len() - 1] {
            assert_eq!(m.nfgen, [NFPROTO_INET, 0, 0, 0]);
        }
        assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(msgs[2].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[7].flags & NLM_F_APPEND, NLM_F_APPEND);
        assert_eq!(batch.begin_seq, 100);
        let seqs: Vec<u32> = batch.steps.iter().map(|s| s.0).collect();
        assert_eq!(seqs, (101..=117).collect::<Vec<_>>());

        // The table's name is NUL-terminated and padded: 4 + 6 bytes, 12 with padding.
        assert_eq!(msgs[1].attrs, b"\x0a\x00\x01\x00rcrun\x00\x00\x00");

        // Chains: hook nested with NLA_F_NESTED, numbers big-endian.
        let chain = attrs(msgs[6].attrs);
        assert_eq!(get(&chain, NFTA_CHAIN_TABLE).data, b"rcrun\0");
        assert_eq!(get(&chain, NFTA_CHAIN_NAME).data, b"postrouting\0");
        assert_eq!(get(&chain, NFTA_CHAIN_TYPE).data, b"nat\0");
        assert_eq!(get(&chain, NFTA_CHAIN_POLICY).data, [0, 0, 0, 1]);
        let hook = get(&chain, NFTA_CHAIN_HOOK);
        assert!(hook.nested);
        let hook = attrs(hook.data);
        assert_eq!(get(&hook, NFTA_HOOK_HOOKNUM).data, [0, 0, 0, 4]);
        assert_eq!(get(&hook, NFTA_HOOK_PRIORITY).data, [0, 0, 0, 100]);

        let chains: Vec<String> = msgs
            .iter()
            .filter(|m| m.ty == RULE)
            .map(|m| {
                let a = attrs(m.attrs);
                assert_eq!(get(&a, NFTA_RULE_TABLE).data, b"rcrun\0");
                String::from_utf8(get(&a, NFTA_RULE_CHAIN).data.to_vec()).unwrap()
            })
            .collect();
        assert_eq!(chains.iter().filter(|c| *c == "forward\0").count(), 8);
        assert_eq!(chains.iter().filter(|c| *c == "postrouting\0").count(), 2);
        assert_eq!(chains[0], "prerouting\0");
        assert!(chains[9..].iter().all(|c| c == "postrouting\0"));
    }

    /// The expressions of a rule message, as (name, attributes of its data).
    fn exprs(m: &Msg<'_>) -> Vec<(String, Vec<u8>)> {
        let a = attrs(m.attrs);
        let list = get(&a, NFTA_RULE_EXPRESSIONS);
        assert!(list.nested);
        attrs(list.data)
            .into_iter()
            .map(|elem| {
                assert_eq!(elem.ty, NFTA_LIST_ELEM);
                assert!(elem.nested);
                let e = attrs(elem.data);
                let name = get(&e, NFTA_EXPR_NAME).data;
                assert_eq!(*name.last().unwrap(), 0);
                let data = get(&e, NFTA_EXPR_DATA);
                assert!(data.nested);
                (
                    String::from_utf8(name[..name.len() - 1].to_vec()).unwrap(),
                    data.data.to_vec(),
                )
            })
            .collect()
    }

    /// An attribute as the kernel expects it, built by hand.
    fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(ty | NLA_F_NESTED, &parts.concat())
    }

    fn be(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    #[test]
    fn same_bridge_rule_bytes() {
        let batch = apply_batch(&small(), 1).unwrap();
        let msgs = messages(&batch.bytes);
        let rule = msgs.iter().filter(|m| m.ty == RULE).nth(1).unwrap();

        let meta = |key| [nla(1, &be(1)), nla(2, &be(key))].concat();
        let mut ifname = b"rcbr0".to_vec();
        ifname.resize(16, 0);
        let cmp = [nla(1, &be(1)), nla(2, &be(0)), nest(3, &[nla(1, &ifname)])].concat();
        let imm = [nla(1, &be(0)), nest(2, &[nest(2, &[nla(1, &be(1))])])].concat();
        let elem = |name: &str, data: &[u8]| {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            nest(1, &[nla(1, &n), nla(2 | NLA_F_NESTED, data)])
        };
        let want = [
            nla(1, b"rcrun\0"),
            nla(2, b"forward\0"),
            nest(
                4,
                &[
                    elem("meta", &meta(6)),
                    elem("cmp", &cmp),
                    elem("meta", &meta(7)),
                    elem("cmp", &cmp),
                    elem("immediate", &imm),
                ],
            ),
        ]
        .concat();
        assert_eq!(rule.attrs, &want[..]);
        // Spot-check the arithmetic of the hand-built bytes: a 16-byte value in its
        // NFTA_DATA_VALUE (20) inside NFTA_CMP_DATA (24).
        assert_eq!(&cmp[16..20], &[24, 0, 3, 0x80]);
        assert_eq!(&cmp[20..24], &[20, 0, 1, 0]);
    }

    #[test]
    fn rule_expressions() {
        let batch = apply_batch(&small(), 1).unwrap();
        let msgs = messages(&batch.bytes);
        let mut rules: Vec<&Msg<'_>> = msgs.iter().filter(|m| m.ty == RULE).collect();
        let names = |m: &Msg<'_>| -> Vec<String> { exprs(m).into_iter().map(|e| e.0).collect() };
        // socket transparent 1 meta mark set TRANSPARENT_MARK, in prerouting.
        assert_eq!(names(rules[0]), ["socket", "cmp", "immediate", "meta"]);
        rules.remove(0);

        // ip saddr 10.88.0.5 ip daddr 10.0.2.2 accept: exact matches, no bitwise.
        assert_eq!(
            names(rules[2]),
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "immediate"
            ]
        );
        let e = exprs(rules[2]);
        assert_eq!(
            e[1].1,
            [nla(1, &be(1)), nla(2, &be(0)), nest(3, &[nla(1, &[2])])].concat()
        );
        let payload = |off: u32, len: u32| {
            [
                nla(1, &be(1)),
                nla(2, &be(1)),
                nla(3, &be(off)),
                nla(4, &be(len)),
            ]
            .concat()
        };
        assert_eq!(e[2].1, payload(12, 4));
        assert_eq!(e[4].1, payload(16, 4));
        assert_eq!(
            e[5].1,
            [
                nla(1, &be(1)),
                nla(2, &be(0)),
                nest(3, &[nla(1, &[10, 0, 2, 2])])
            ]
            .concat()
        );
        // ip daddr 10.0.2.2 drop
        assert_eq!(
            names(rules[3]),
            ["meta", "cmp", "payload", "cmp", "immediate"]
        );
        assert_eq!(
            exprs(rules[3])[4].1,
            [nla(1, &be(0)), nest(2, &[nest(2, &[nla(1, &be(0))])])].concat()
        );
        // iifname tap0 oifname rcbr0 ct state established,related accept
        assert_eq!(
            names(rules[5]),
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "ct",
                "bitwise",
                "cmp",
                "immediate"
            ]
        );
        let e = exprs(rules[5]);
        assert_eq!(e[4].1, [nla(1, &be(1)), nla(2, &be(0))].concat());
        assert_eq!(
            e[5].1,
            [
                nla(1, &be(1)),
                nla(2, &be(1)),
                nla(3, &be(4)),
                nest(4, &[nla(1, &6u32.to_ne_bytes())]),
                nest(5, &[nla(1, &[0; 4])]),
            ]
            .concat()
        );
        assert_eq!(
            e[6].1,
            [nla(1, &be(1)), nla(2, &be(1)), nest(3, &[nla(1, &[0; 4])])].concat()
        );
        // iifname "rcbr*" drop: the cmp covers the 4 prefix bytes only.
        assert_eq!(names(rules[6]), ["meta", "cmp", "immediate"]);
        assert_eq!(
            exprs(rules[6])[1].1,
            [nla(1, &be(1)), nla(2, &be(0)), nest(3, &[nla(1, b"rcbr")])].concat()
        );
        assert_eq!(
            exprs(rules[7])[0].1,
            [nla(1, &be(1)), nla(2, &be(7))].concat()
        );
        // ip saddr 10.88.0.0/24 oifname tap0 masquerade
        assert_eq!(
            names(rules[8]),
            [
                "meta", "cmp", "payload", "bitwise", "cmp", "meta", "cmp", "masq"
            ]
        );
        let e = exprs(rules[8]);
        assert_eq!(
            e[3].1[24..],
            [
                nest(4, &[nla(1, &[255, 255, 255, 0])]),
                nest(5, &[nla(1, &[0; 4])])
            ]
            .concat()
        );
        assert_eq!(e[4].1[16..], nest(3, &[nla(1, &[10, 88, 0, 0])]));
        assert!(e[7].1.is_empty());
        // ip6 saddr fd00:88::/64: nfproto ipv6, 16 bytes at offset 8, an 8-byte mask.
        let e = exprs(rules[9]);
        assert_eq!(e[1].1[16..], nest(3, &[nla(1, &[10])]));
        assert_eq!(e[2].1, payload(8, 16));
        let mut mask = vec![0xff; 8];
        mask.resize(16, 0);
        assert_eq!(
            e[3].1[..24],
            [nla(1, &be(1)), nla(2, &be(1)), nla(3, &be(16))].concat()
        );
        assert_eq!(e[3].1[24..48], nest(4, &[nla(1, &mask)]));
    }

    #[test]
    fn rule_text_reads_like_nft() {
        let texts: Vec<String> = rules_of(&small())
            .into_iter()
            .map(|(c, r)| format!("{c}: {}", r.text.join(" ")))
            .collect();
        assert_eq!(
            texts,
            [
                r#"forward: iifname "rcbr0" oifname "rcbr0" accept"#,
                r#"forward: iifname "rcbr1" oifname "rcbr1" accept"#,
                "forward: ip saddr 10.88.0.5 ip daddr 10.0.2.2 accept",
                "forward: ip daddr 10.0.2.2 drop",
                r#"forward: iifname "rcbr0" oifname "tap0" accept"#,
                r#"forward: iifname "tap0" oifname "rcbr0" ct state established,related accept"#,
                r#"forward: iifname "rcbr*" drop"#,
                r#"forward: oifname "rcbr*" drop"#,
                r#"postrouting: ip saddr 10.88.0.0/24 oifname "tap0" masquerade"#,
                r#"postrouting: ip6 saddr fd00:88::/64 oifname "tap0" masquerade"#,
            ]
        );
    }

    #[test]
    fn prefixes_are_masked() {
        let r = Rule::default().addr(true, "10.1.2.3".parse().unwrap(), 12);
        assert_eq!(r.text, ["ip saddr 10.0.0.0/12"]);
        assert_eq!(r.exprs[3], Expr::Bitwise(vec![255, 240, 0, 0]));
        assert_eq!(r.exprs[4], Expr::Cmp(NFT_CMP_EQ, vec![10, 0, 0, 0]));
        // /0 matches the family only.
        let r = Rule::default().addr(true, "fd00::1".parse().unwrap(), 0);
        assert_eq!(
            r.exprs,
            [
                Expr::Meta(NFT_META_NFPROTO),
                Expr::Cmp(NFT_CMP_EQ, vec![10])
            ]
        );
    }

    #[test]
    fn no_egress_means_no_nat_and_only_isolation() {
        let rs = Ruleset {
            networks: vec![net("rcbr3", false, &[("10.1.0.0", 16)])],
            ..Default::default()
        };
        let texts: Vec<String> = rules_of(&rs)
            .into_iter()
            .map(|(c, r)| format!("{c}: {}", r.text.join(" ")))
            .collect();
        assert_eq!(
            texts,
            [
                r#"forward: iifname "rcbr3" oifname "rcbr3" accept"#,
                r#"forward: iifname "rcbr*" drop"#,
                r#"forward: oifname "rcbr*" drop"#,
            ]
        );
    }

    #[test]
    fn remove_batch_layout() {
        let batch = remove_batch(7);
        let msgs = messages(&batch.bytes);
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(batch.steps.len(), 2);
    }

    #[test]
    fn replies_are_split() {
        let mut data = Vec::new();
        for seq in [5u32, 6] {
            data.extend(36u32.to_ne_bytes());
            data.extend(NLMSG_ERROR.to_ne_bytes());
            data.extend(0u16.to_ne_bytes());
            data.extend(seq.to_ne_bytes());
            data.extend(0u32.to_ne_bytes());
            data.extend((-libc::ENOENT).to_ne_bytes());
            data.extend([0u8; 16]);
        }
        let r = parse_replies(&data).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].ty, r[0].seq, r[1].seq), (NLMSG_ERROR, 5, 6));
        assert_eq!(r[1].payload.len(), 20);
        assert!(parse_replies(&data[..30]).is_err());
    }
}
