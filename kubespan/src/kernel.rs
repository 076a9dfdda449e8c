//! The kernel's WireGuard as KubeSpan's data plane: the `kubespan` link is networkd's (kind
//! `wireguard`); this configures its key, port, mark and peers over WireGuard's generic netlink
//! family, as `wg` does, and reads each peer's handshake and counters back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use genetlink::GenetlinkHandle;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use tokio::sync::Mutex;

use crate::device::{DataPlane, DeviceError, DeviceOptions, DevicePeer, PeerStats};
use crate::identity::KeyPair;

/// The link and a generic netlink connection to WireGuard.
pub struct Kernel {
    handle: Mutex<GenetlinkHandle>,
    link: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    opts: Option<DeviceOptions>,
    /// What was last set, so an unchanged peer set costs nothing.
    applied: Vec<DevicePeer>,
    /// When each peer's receive counter last moved.
    rx: BTreeMap<[u8; 32], (u64, Instant)>,
}

impl Kernel {
    /// The kernel's WireGuard, if it has one. Resolving the generic netlink family loads the
    /// module when it is not loaded; where there is none (this build host, Docker-mode nodes)
    /// the answer is `None` and KubeSpan runs in userspace.
    pub async fn open(link: &str) -> Option<Kernel> {
        let (conn, handle, _) = genetlink::new_connection().ok()?;
        tokio::spawn(conn);
        handle.resolve_family::<WireguardMessage>().await.ok()?;
        Some(Kernel {
            handle: Mutex::new(handle),
            link: link.to_string(),
            state: Mutex::new(State::default()),
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> DeviceError {
        DeviceError::Kernel {
            link: self.link.clone(),
            message: message.to_string(),
        }
    }

    async fn request(
        &self,
        cmd: WireguardCmd,
        flags: u16,
        mut attributes: Vec<WireguardAttribute>,
    ) -> Result<Vec<WireguardAttribute>, DeviceError> {
        attributes.insert(0, WireguardAttribute::IfName(self.link.clone()));
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd,
            attributes,
        }));
        msg.header.flags = NLM_F_REQUEST | flags;
        msg.finalize();
        let mut handle = self.handle.lock().await;
        let mut responses = handle.request(msg).await.map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = responses.next().await {
            match r.map_err(|e| self.err(e))?.payload {
                NetlinkPayload::InnerMessage(m) => out.extend(m.payload.attributes),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(self.err(e.to_io())),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sets the key, port and mark, once networkd has made the link (waits up to 30 s).
    pub async fn configure(&self, keys: &KeyPair, opts: DeviceOptions) -> Result<(), DeviceError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .request(WireguardCmd::GetDevice, NLM_F_DUMP, Vec::new())
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let mut attrs = vec![
            WireguardAttribute::PrivateKey(keys.private()),
            WireguardAttribute::ListenPort(opts.port),
        ];
        if let Some(mark) = opts.fwmark {
            attrs.push(WireguardAttribute::Fwmark(mark));
        }
        self.request(WireguardCmd::SetDevice, NLM_F_ACK, attrs)
            .await?;
        self.state.lock().await.opts = Some(opts);
        Ok(())
    }
}

fn allowed_ip(p: &basalt_config::types::Prefix) -> WireguardAllowedIp {
    let ip = p.addr();
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(if ip.is_ipv4() {
            WireguardAddressFamily::Ipv4
        } else {
            WireguardAddressFamily::Ipv6
        }),
        WireguardAllowedIpAttr::IpAddr(ip),
        WireguardAllowedIpAttr::Cidr(p.prefix_len()),
    ])
}

impl DataPlane for Kernel {
    fn set_peers<'a>(&'a self, peers: &'a [DevicePeer]) -> BoxFuture<'a, Result<(), DeviceError>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            if state.applied == peers {
                return Ok(());
            }
            let opts = state.opts.unwrap_or_default();
            let mut list: Vec<WireguardPeer> = Vec::new();
            for old in &state.applied {
                if !peers.iter().any(|p| p.public_key == old.public_key) {
                    list.push(WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey(old.public_key),
                        WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                    ]));
                }
            }
            for p in peers {
                let before = state.applied.iter().find(|o| o.public_key == p.public_key);
                let mut attrs = vec![
                    WireguardPeerAttribute::PublicKey(p.public_key),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                    WireguardPeerAttribute::PersistentKeepalive(opts.keepalive),
                    WireguardPeerAttribute::AllowedIps(
                        p.allowed_ips.iter().map(allowed_ip).collect(),
                    ),
                ];
                if let Some(k) = opts.preshared_key {
                    attrs.push(WireguardPeerAttribute::PresharedKey(k));
                }
                // Only a changed choice is set: the kernel follows a roaming peer by itself,
                // and setting the same endpoint again would undo that.
                if let Some(e) = p.endpoint
                    && before.and_then(|b| b.endpoint) != Some(e)
                {
                    attrs.push(WireguardPeerAttribute::Endpoint(e));
                }
                list.push(WireguardPeer(attrs));
            }
            self.request(
                WireguardCmd::SetDevice,
                NLM_F_ACK,
                vec![WireguardAttribute::Peers(list)],
            )
            .await?;
            state.applied = peers.to_vec();
            Ok(())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<PeerStats>, DeviceError>> {
        Box::pin(async move {
            let attrs = self
                .request(WireguardCmd::GetDevice, NLM_F_DUMP, Vec::new())
                .await?;
            let now_wall = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let mut state = self.state.lock().await;
            let mut out = Vec::new();
            for a in attrs {
                let WireguardAttribute::Peers(peers) = a else {
                    continue;
                };
                for WireguardPeer(pa) in peers {
                    let mut s = PeerStats {
                        public_key: [0; 32],
                        endpoint: None,
                        since_handshake: None,
                        since_received: None,
                        tx_bytes: 0,
                        rx_bytes: 0,
                    };
                    for a in pa {
                        match a {
                            WireguardPeerAttribute::PublicKey(k) => s.public_key = k,
                            WireguardPeerAttribute::Endpoint(e) => s.endpoint = Some(e),
                            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                                let at = Duration::new(
                                    t.seconds as u64,
                                    u32::try_from(t.nano_seconds).unwrap_or(0),
                                );
                                s.since_handshake = Some(now_wall.saturating_sub(at));
                            }
                            WireguardPeerAttribute::RxBytes(n) => s.rx_bytes = n,
                            WireguardPeerAttribute::TxBytes(n) => s.tx_bytes = n,
                            _ => {}
                        }
                    }
                    // The kernel does not say when a packet last came; a moving receive
                    // counter does (keepalives count).
                    let now = Instant::now();
                    let e = state.rx.entry(s.public_key).or_insert((s.rx_bytes, now));
                    if e.0 != s.rx_bytes {
                        *e = (s.rx_bytes, now);
                    }
                    if s.rx_bytes > 0 {
                        s.since_received = Some(now.duration_since(e.1));
                    }
                    out.push(s);
                }
            }
            state
                .rx
                .retain(|k, _| out.iter().any(|s| s.public_key == *k));
            Ok(out)
        })
    }
}
