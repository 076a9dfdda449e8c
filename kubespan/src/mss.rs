//! TCP MSS clamping for traffic through the mesh link, as an nftables table of KubeSpan's own
//! (`inet basalt_kubespan`), written over netlink (no `nft` binary on a node):
//!
//! ```text
//! table inet basalt_kubespan {
//!     chain clamp {
//!         type filter hook forward priority mangle; policy accept;
//!         oifname "kubespan" meta nfproto ipv4 tcp flags & (syn|rst) == syn tcp option maxseg size > MTU-40 tcp option maxseg size set MTU-40
//!         ... the same for ipv6 (MTU-60), and for iifname "kubespan"
//!     }
//! }
//! ```
//!
//! Connections this node makes already size their segments from the link's MTU; forwarded ones
//! (pods, relayed peers) get their SYN's MSS lowered so no segment needs fragmenting in the
//! tunnel. The table is replaced whole in one batch (add, delete, add: atomic and idempotent).

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The table's name.
pub const TABLE: &str = "basalt_kubespan";
const CHAIN: &str = "clamp";

// nfnetlink and nf_tables (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NF_INET_FORWARD: u32 = 2;
const NF_IP_PRI_MANGLE: i32 = -150;
const NF_ACCEPT: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_GT: u32 = 4;
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;
const TCPOPT_MAXSEG: u8 = 2;
const IPPROTO_TCP: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum MssError {
    #[error("nftables over netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("the kernel refused KubeSpan's nftables table ({0})")]
    Refused(std::io::Error),
}

/// Netlink attributes, appended with their padding.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn raw(mut self, kind: u16, value: &[u8]) -> Self {
        let len = 4 + value.len();
        // The few attributes of an nftables rule are far below 64 KiB.
        self.0
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len() + (4 - len % 4) % 4, 0);
        self
    }
    fn str(self, kind: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v)
    }
    fn be32(self, kind: u16, v: u32) -> Self {
        self.raw(kind, &v.to_be_bytes())
    }
    fn nest(self, kind: u16, inner: Attrs) -> Self {
        self.raw(kind | NLA_F_NESTED, &inner.0)
    }
    /// `NFTA_DATA_VALUE` inside a nest.
    fn data(self, kind: u16, value: &[u8]) -> Self {
        self.nest(kind, Attrs::default().raw(1, value))
    }
}

/// One expression: `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.
fn expr(name: &str, data: Attrs) -> Attrs {
    Attrs::default().nest(1, Attrs::default().str(1, name).nest(2, data))
}

fn meta(key: u32) -> Attrs {
    expr("meta", Attrs::default().be32(1, NFT_REG_1).be32(2, key))
}

fn cmp(op: u32, value: &[u8]) -> Attrs {
    expr(
        "cmp",
        Attrs::default()
            .be32(1, NFT_REG_1)
            .be32(2, op)
            .data(3, value),
    )
}

fn maxseg(load: bool) -> Attrs {
    let a = Attrs::default()
        .be32(if load { 1 } else { 7 }, NFT_REG_1)
        .raw(2, &[TCPOPT_MAXSEG])
        .be32(3, 2)
        .be32(4, 2)
        .be32(6, NFT_EXTHDR_OP_TCPOPT);
    expr("exthdr", a)
}

/// The expressions of one rule: the link in one direction, one family, a SYN whose MSS is over
/// `mss`, which is set to `mss`.
fn rule(inbound: bool, family: u8, mss: u16) -> Vec<u8> {
    let mut ifname = basalt_networkd::sources::KUBESPAN_LINK.as_bytes().to_vec();
    ifname.push(0);
    let parts = [
        meta(if inbound {
            NFT_META_IIFNAME
        } else {
            NFT_META_OIFNAME
        }),
        cmp(NFT_CMP_EQ, &ifname),
        meta(NFT_META_NFPROTO),
        cmp(NFT_CMP_EQ, &[family]),
        meta(NFT_META_L4PROTO),
        cmp(NFT_CMP_EQ, &[IPPROTO_TCP]),
        // tcp flags & (syn|rst) == syn
        expr(
            "payload",
            Attrs::default()
                .be32(1, NFT_REG_1)
                .be32(2, NFT_PAYLOAD_TRANSPORT_HEADER)
                .be32(3, 13)
                .be32(4, 1),
        ),
        expr(
            "bitwise",
            Attrs::default()
                .be32(1, NFT_REG_1)
                .be32(2, NFT_REG_1)
                .be32(3, 1)
                .data(4, &[0x06])
                .data(5, &[0x00]),
        ),
        cmp(NFT_CMP_EQ, &[0x02]),
        maxseg(true),
        cmp(NFT_CMP_GT, &mss.to_be_bytes()),
        expr(
            "immediate",
            Attrs::default()
                .be32(1, NFT_REG_1)
                .data(2, &mss.to_be_bytes()),
        ),
        maxseg(false),
    ];
    parts.into_iter().flat_map(|a| a.0).collect()
}

fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

fn table_attrs() -> Attrs {
    Attrs::default().str(1, TABLE)
}

/// The batch that replaces the table with one that clamps to `mtu`; `None` only deletes it.
fn batch(mtu: Option<u16>) -> (Vec<u8>, u32) {
    let nft = |m: u16| (NFNL_SUBSYS_NFTABLES << 8) | m;
    let mut out = Vec::new();
    let mut seq = 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        0,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut push = |out: &mut Vec<u8>, kind: u16, flags: u16, attrs: &[u8]| {
        seq += 1;
        message(
            out,
            nft(kind),
            NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
            attrs,
        );
    };
    // Add (a no-op if it exists), delete, add: the old table goes whatever it held.
    push(&mut out, NFT_MSG_NEWTABLE, NLM_F_CREATE, &table_attrs().0);
    push(&mut out, NFT_MSG_DELTABLE, 0, &table_attrs().0);
    if let Some(mtu) = mtu {
        push(&mut out, NFT_MSG_NEWTABLE, NLM_F_CREATE, &table_attrs().0);
        let hook = Attrs::default()
            .be32(1, NF_INET_FORWARD)
            .be32(2, NF_IP_PRI_MANGLE as u32);
        let chain = table_attrs()
            .str(3, CHAIN)
            .nest(4, hook)
            .be32(5, NF_ACCEPT)
            .str(7, "filter");
        push(&mut out, NFT_MSG_NEWCHAIN, NLM_F_CREATE, &chain.0);
        for inbound in [false, true] {
            for (family, overhead) in [(NFPROTO_IPV4, 40), (NFPROTO_IPV6, 60)] {
                let exprs = rule(inbound, family, mtu.saturating_sub(overhead));
                let r = table_attrs().str(2, CHAIN).raw(4 | NLA_F_NESTED, &exprs);
                push(&mut out, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &r.0);
            }
        }
    }
    let last = seq;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        0,
        seq + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (out, last)
}

fn send(batch: &[u8], last: u32) -> Result<(), MssError> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    // Never wait forever for the kernel's answer.
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )
    .map_err(std::io::Error::from)?;
    s.connect(&SocketAddr::new(0, 0))?;
    s.send(batch, 0)?;
    // An ack (or error) per message; the batch is all or nothing.
    let mut acked = 0;
    let mut buf = vec![0u8; 65536];
    while acked < last - 1 {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
            if kind == NLMSG_ERROR && off + 20 <= n {
                let code =
                    i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                if code != 0 {
                    return Err(MssError::Refused(std::io::Error::from_raw_os_error(-code)));
                }
                acked += 1;
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

/// Installs (or replaces) the clamping table for a mesh link of `mtu`.
pub fn install(mtu: u16) -> Result<(), MssError> {
    let (b, last) = batch(Some(mtu));
    send(&b, last)
}

/// Removes the table (nothing if there is none).
pub fn remove() -> Result<(), MssError> {
    let (b, last) = batch(None);
    send(&b, last)
}
