//! Links, addresses and routes over rtnetlink: one connection per network
//! namespace, opened from a thread that is in it (a netlink socket keeps the
//! namespace it was created in).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::Error;

pub(crate) struct Netlink {
    handle: Handle,
    what: String,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

impl Netlink {
    /// A connection in the calling thread's network namespace; its driver runs on
    /// the current tokio runtime.
    pub(crate) fn open(what: &str) -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::io(format!("open a netlink socket in {what}"), e))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            what: what.to_string(),
        })
    }

    fn fail(&self, step: impl std::fmt::Display, e: rtnetlink::Error) -> Error {
        Error::Netlink {
            step: format!("{step} in {}", self.what),
            errno: errno_of(&e),
            detail: e.to_string(),
        }
    }

    pub(crate) async fn link(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.fail(format_args!("look up link {name}"), e)),
        }
    }

    pub(crate) async fn index(&self, name: &str) -> Result<Option<u32>, Error> {
        Ok(self.link(name).await?.map(|l| l.header.index))
    }

    async fn require(&self, name: &str) -> Result<u32, Error> {
        self.index(name)
            .await?
            .ok_or_else(|| Error::Internal(format!("link {name} vanished in {}", self.what)))
    }

    /// Brings `lo` up.
    pub(crate) async fn loopback_up(&self) -> Result<(), Error> {
        let lo = self.require("lo").await?;
        self.up(lo).await
    }

    /// Packets marked `mark` are delivered locally whatever their destination:
    /// the replies to connections a transparent socket opened with a client's
    /// address (published ports keep the client's IPv4 source).
    pub(crate) async fn deliver_marked_locally(&self, mark: u32, table: u32) -> Result<(), Error> {
        let lo = self.require("lo").await?;
        let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0)
            .table_id(table)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(self.fail(format_args!("add a local route to table {table}"), e)),
        }
        match self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(mark)
            .table_id(table)
            .action(RuleAction::ToTable)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail(format_args!("add a rule: fwmark {mark} lookup {table}"), e)),
        }
    }

    pub(crate) async fn up(&self, index: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("bring link {index} up"), e))
    }

    /// The bridge `name`, created (up, with `addresses`) if missing.
    pub(crate) async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: [u8; 6],
        addresses: &[(IpAddr, u8)],
    ) -> Result<u32, Error> {
        let index = match self.index(name).await? {
            Some(i) => i,
            None => {
                let created = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build())
                    .execute()
                    .await;
                match created {
                    Ok(()) => {}
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(self.fail(format_args!("create bridge {name}"), e)),
                }
                self.require(name).await?
            }
        };
        for (ip, prefix) in addresses {
            self.add_address(index, *ip, *prefix).await?;
        }
        self.up(index).await?;
        Ok(index)
    }

    /// Deletes a link; a missing one is fine.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), Error> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(self.fail(format_args!("delete link {name}"), e)),
        }
    }

    /// Adds an address (already present is fine); IPv6 skips duplicate address
    /// detection, so the address is usable at once.
    pub(crate) async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> Result<(), Error> {
        let mut request = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail(format_args!("add address {ip}/{prefix}"), e)),
        }
    }

    /// Creates a veth pair in one message: `host` here, on `bridge` and up; the
    /// peer born inside `netns` as `ifname` with `mac`. Moving an existing link
    /// between namespaces waits for an RCU grace period (20-40 ms here); creating it
    /// there does not.
    pub(crate) async fn create_veth(
        &self,
        host: &str,
        bridge: u32,
        mtu: u32,
        peer: (&str, [u8; 6], BorrowedFd<'_>),
    ) -> Result<(), Error> {
        let (ifname, mac, netns) = peer;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::default()
            .name(ifname)
            .address(mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host)
            .mtu(mtu)
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(|e| self.fail(format_args!("create veth pair {host} ({ifname} inside)"), e))
    }

    /// Brings up the container's end of a veth pair; returns its index.
    pub(crate) async fn peer_up(&self, ifname: &str) -> Result<u32, Error> {
        let index = self.require(ifname).await?;
        self.up(index).await?;
        Ok(index)
    }

    /// Adds a default route via `gateway` out of `index`, unless one exists.
    pub(crate) async fn add_default_route(&self, index: u32, gateway: IpAddr) -> Result<(), Error> {
        let any = match gateway {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .and_then(|r| r.gateway(gateway))
            .map_err(|e| Error::Internal(e.to_string()))?
            .output_interface(index)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail(format_args!("add a default route via {gateway}"), e)),
        }
    }

    /// The names of every link in the namespace.
    pub(crate) async fn link_names(&self) -> Result<Vec<String>, Error> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail("list links", e))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    }
}
