//! Ethernet frame decapsulation for the AF_XDP path: find the UDP payload in
//! a raw frame (Ethernet, an 802.1Q tag only with `--vlan`, IPv4 or IPv6,
//! UDP), matched as the XDP program matches it.
//!
//! The XDP program has already matched group and port, so this only has to
//! find where the datagram starts, check that every length is sound, and
//! tell who sent it (for source filtering).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::proto::wire::DropReason;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_VID_MASK: u16 = 0x0fff;
const IPPROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
const IPV6_LEN: usize = 40;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Return the UDP payload of an untagged Ethernet frame, bounded by the
/// UDP length field (Ethernet padding is cut off).
pub fn udp_payload(frame: &[u8]) -> Result<&[u8], DropReason> {
    udp_datagram(frame, None).map(|(_, payload)| payload)
}

/// The IP source address and the UDP payload of an Ethernet frame: an
/// untagged one when `vlan` is None, else one with a single 802.1Q tag of
/// VLAN id `vlan`, as the XDP program matches them (a frame of another VLAN
/// is [`DropReason::NotUdp`]: not the session's).
pub fn udp_datagram(frame: &[u8], vlan: Option<u16>) -> Result<(IpAddr, &[u8]), DropReason> {
    if frame.len() < ETH_LEN {
        return Err(DropReason::Truncated);
    }
    let mut ethertype = be16(frame, 12);
    let mut l3 = ETH_LEN;
    let tagged = ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD;
    match vlan {
        None if tagged => return Err(DropReason::NotUdp),
        None => {}
        Some(_) if ethertype != ETH_P_8021Q => return Err(DropReason::NotUdp),
        Some(vid) => {
            if frame.len() < ETH_LEN + VLAN_LEN {
                return Err(DropReason::Truncated);
            }
            if be16(frame, 14) & VLAN_VID_MASK != vid & VLAN_VID_MASK {
                return Err(DropReason::NotUdp);
            }
            ethertype = be16(frame, 16);
            l3 += VLAN_LEN;
        }
    }
    let ip = &frame[l3..];
    let (proto, l4, source) = match ethertype {
        ETH_P_IPV4 => {
            if ip.len() < 20 {
                return Err(DropReason::Truncated);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = be16(ip, 6);
            if ip[0] >> 4 != 4 || ihl < 20 || frag & 0x1fff != 0 || frag & 0x2000 != 0 {
                return Err(DropReason::NotUdp);
            }
            let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
            (ip[9], ihl, IpAddr::V4(Ipv4Addr::from(src)))
        }
        ETH_P_IPV6 => {
            if ip.len() < IPV6_LEN {
                return Err(DropReason::Truncated);
            }
            let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            (ip[6], IPV6_LEN, IpAddr::V6(Ipv6Addr::from(src)))
        }
        _ => return Err(DropReason::NotUdp),
    };
    if proto != IPPROTO_UDP {
        return Err(DropReason::NotUdp);
    }
    if ip.len() < l4 + UDP_LEN {
        return Err(DropReason::Truncated);
    }
    let udp = &ip[l4..];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_LEN {
        return Err(DropReason::Truncated);
    }
    let payload = udp.get(UDP_LEN..udp_len).ok_or(DropReason::Truncated)?;
    Ok((source, payload))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build an Ethernet/IPv4/UDP frame around `payload` (checksums left zero).
    pub(crate) fn ipv4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let total = 20 + UDP_LEN + payload.len();
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 1;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 7]);
        ip[16..20].copy_from_slice(&[239, 1, 2, 3]);
        f.extend_from_slice(&ip);
        let mut udp = [0u8; UDP_LEN];
        udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((UDP_LEN + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&udp);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_payload_and_strips_padding() {
        let mut f = ipv4_frame(b"hello");
        f.extend_from_slice(&[0; 20]); // Ethernet minimum-size padding
        assert_eq!(udp_payload(&f), Ok(&b"hello"[..]));
        assert_eq!(
            udp_datagram(&f, None),
            Ok((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), &b"hello"[..]))
        );
    }

    fn tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&tpid.to_be_bytes());
        tagged.extend_from_slice(&tci.to_be_bytes());
        tagged.extend_from_slice(&frame[12..]);
        tagged
    }

    #[test]
    fn vlans_as_the_program_matches_them() {
        let v4 = ipv4_frame(b"abc");
        let v5 = tag(&v4, ETH_P_8021Q, 5);
        // An untagged port takes untagged frames only.
        assert_eq!(udp_payload(&v5), Err(DropReason::NotUdp));
        assert_eq!(
            udp_payload(&tag(&v4, ETH_P_8021AD, 5)),
            Err(DropReason::NotUdp)
        );
        // With --vlan 5: that VLAN's frames only (priority bits ignored).
        assert_eq!(udp_datagram(&v5, Some(5)).map(|d| d.1), Ok(&b"abc"[..]));
        let prio = tag(&v4, ETH_P_8021Q, 0xE005);
        assert_eq!(udp_datagram(&prio, Some(5)).map(|d| d.1), Ok(&b"abc"[..]));
        assert_eq!(udp_datagram(&v5, Some(99)), Err(DropReason::NotUdp));
        assert_eq!(udp_datagram(&v4, Some(5)), Err(DropReason::NotUdp));
        let qinq = tag(&v5, ETH_P_8021AD, 7);
        assert_eq!(udp_datagram(&qinq, Some(5)), Err(DropReason::NotUdp));
        assert_eq!(udp_datagram(&v5[..16], Some(5)), Err(DropReason::Truncated));
    }

    #[test]
    fn ipv6() {
        let mut v6 = vec![0u8; ETH_LEN];
        v6[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut ip = [0u8; IPV6_LEN];
        ip[0] = 0x60;
        ip[6] = IPPROTO_UDP;
        ip[8] = 0xfe;
        ip[9] = 0x80;
        ip[23] = 9;
        v6.extend_from_slice(&ip);
        v6.extend_from_slice(&[0, 1, 0, 2, 0, 10, 0, 0, b'x', b'y']);
        assert_eq!(udp_payload(&v6), Ok(&b"xy"[..]));
        let src: Ipv6Addr = "fe80::9".parse().unwrap();
        assert_eq!(udp_datagram(&v6, None), Ok((IpAddr::V6(src), &b"xy"[..])));
    }

    #[test]
    fn rejects_short_and_foreign_frames() {
        let f = ipv4_frame(b"hello");
        for len in 0..ETH_LEN + 20 + UDP_LEN + 5 {
            assert!(udp_payload(&f[..len]).is_err(), "len {len}");
        }
        let mut tcp = f.clone();
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(udp_payload(&tcp), Err(DropReason::NotUdp));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(udp_payload(&arp), Err(DropReason::NotUdp));
        let mut frag = f;
        frag[ETH_LEN + 6] = 0x20; // more fragments
        assert_eq!(udp_payload(&frag), Err(DropReason::NotUdp));
    }
}
