//! Traffic control: the ingress qdisc, and a u32 match-everything filter with a mirred
//! egress redirect, which is how a tap and the interface beside it are joined (as Kata and
//! firecracker-containerd's tc-redirect-tap do; flower and matchall are not built into
//! every kernel, u32 is).

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, Result};

/// `ffff:` — the ingress qdisc's handle.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `TC_H_INGRESS`: where the ingress qdisc hangs.
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff1,
};
/// `ETH_P_ALL` in network order, as `tcm_info`'s protocol half wants it.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// Priority of husk's filter.
const PRIO: u32 = 1;

fn msg(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = index as i32;
    m
}

impl Netlink {
    /// Adds the ingress qdisc to link `index`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut m = msg(index);
        m.header.handle = INGRESS_HANDLE;
        m.header.parent = INGRESS_PARENT;
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding an ingress qdisc to interface {index}"),
        )
        .map(drop)
    }

    /// Removes link `index`'s ingress qdisc, and with it every filter on it.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut m = msg(index);
        m.header.handle = INGRESS_HANDLE;
        m.header.parent = INGRESS_PARENT;
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(m),
            NLM_F_ACK,
            &format!("removing the ingress qdisc of interface {index}"),
        )
        .map(drop)
    }

    /// Sends everything arriving on link `from` out of link `to`: a u32 filter matching
    /// every frame on `from`'s ingress qdisc, with a mirred egress redirect.
    pub fn add_redirect(&mut self, from: u32, to: u32) -> Result<()> {
        let mut m = msg(from);
        m.header.parent = INGRESS_HANDLE;
        m.header.info = (PRIO << 16) | ETH_P_ALL_BE;
        m.attributes.push(TcAttribute::Kind("u32".into()));
        // `match u32 0 0`: one key that every frame satisfies.
        let mut key = TcU32Key::default();
        key.mask = 0;
        key.val = 0;
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];
        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("redirecting interface {from} to interface {to}"),
        )
        .map(drop)
    }

    /// The interfaces link `index`'s ingress filters redirect to (mirred egress).
    pub fn redirect_targets(&mut self, index: u32) -> Result<Vec<u32>> {
        let mut m = msg(index);
        m.header.parent = INGRESS_HANDLE;
        let answers = self.request(
            RouteNetlinkMessage::GetTrafficFilter(m),
            NLM_F_DUMP,
            &format!("listing the ingress filters of interface {index}"),
        )?;
        let mut targets = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewTrafficFilter(f) = a else {
                continue;
            };
            for attr in &f.attributes {
                let TcAttribute::Options(opts) = attr else {
                    continue;
                };
                for o in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                        continue;
                    };
                    for act in actions {
                        for aa in &act.attributes {
                            let TcActionAttribute::Options(ao) = aa else {
                                continue;
                            };
                            for x in ao {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = x {
                                    if p.eaction == TcMirrorActionType::EgressRedir {
                                        targets.push(p.ifindex);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(targets)
    }
}
