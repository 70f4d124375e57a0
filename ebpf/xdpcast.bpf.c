// SPDX-License-Identifier: MIT OR Apache-2.0 OR GPL-2.0
//
// xdpcast XDP steering program.
//
// Matches Ethernet -> IPv4 (any IHL, not a non-first fragment) or IPv6 (no
// extension headers) -> UDP whose destination address and port equal the
// session's group:port from XDPCAST_CONFIG, and
// - on an untagged port (vlan_set 0, the default): untagged frames only; a
//   frame with an 802.1Q/802.1ad tag belongs to a VLAN (sub-)interface, not
//   to the session, and is passed to the kernel;
// - with vlan_set 1 (`receive --vlan VID`, XDP on a trunk port): frames with
//   exactly one 802.1Q tag whose VLAN id is `vlan` only;
// and redirects those frames to the AF_XDP socket registered in XDPCAST_XSKS for
// the receiving queue. With `unicast4` set, UDP to this host's address and
// the same port is steered as well (udpcast's point-to-point mode sends
// the data there). Everything else is passed to the kernel untouched.
//
// Build (done by receiver/build.rs):
//   clang -O2 -g -target bpf -c xdpcast.bpf.c -o xdpcast.bpf.o
//
// The layout of `struct xdpcast_config` is mirrored by `XdpcastConfig` in
// receiver/src/net/steer.rs; keep them in sync.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define XDPCAST_FAMILY_V4 4
#define XDPCAST_FAMILY_V6 6

// IPv4 fragment offset mask (the low 13 bits of frag_off).
#define IP_OFFSET_MASK 0x1fff
// VLAN id bits of an 802.1Q tag control information field.
#define VLAN_VID_MASK 0x0fff

struct xdpcast_config {
	__u32 group4;           // IPv4 group, network byte order (family 4)
	__u16 port;             // UDP destination port, network byte order
	__u8 enabled;           // 0: pass everything
	__u8 family;            // XDPCAST_FAMILY_V4 or XDPCAST_FAMILY_V6
	__u32 drop_per_million; // test loss injection for matched frames
	__u8 group6[16];        // IPv6 group, network byte order (family 6)
	__u32 source4;          // sender's IPv4 address (with source_set)
	__u8 source_set;        // 1: drop the group's frames from other sources
	__u8 pad[3];
	__u8 source6[16];       // sender's IPv6 address (with source_set)
	__u32 unicast4;         // this host's IPv4 address, network byte order:
	                        // also steered (a udpcast point-to-point
	                        // session); 0: none
	__u16 vlan;             // VLAN id (with vlan_set), host byte order
	__u8 vlan_set;          // 1: tagged frames of VLAN `vlan` only; 0: untagged only
	__u8 pad2;
};

enum xdpcast_stat {
	STAT_MATCHED = 0,
	STAT_REDIRECTED = 1,
	STAT_NO_SOCKET = 2,
	STAT_PASSED = 3,
	STAT_INJECTED_DROP = 4,
	STAT_FOREIGN_SOURCE = 5,
	STAT_MAX = 6,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpcast_config);
} XDPCAST_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} XDPCAST_XSKS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} XDPCAST_STATS SEC(".maps");

// Matched frames per RX queue that had no socket in XDPCAST_XSKS (queues
// 0..63, the XSKMAP's range; higher ones count in STAT_NO_SOCKET only), so
// that the receiver can name the queues it should also serve.
#define XDPCAST_QUEUE_SLOTS 64

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCAST_QUEUE_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} XDPCAST_UNSERVED SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

static __always_inline void count_in(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += 1; // per-CPU slot: no atomic needed
}

static __always_inline void count(__u32 idx)
{
	count_in(&XDPCAST_STATS, idx);
}

static __always_inline int pass(void)
{
	count(STAT_PASSED);
	return XDP_PASS;
}

// Returns 1 if the frame is UDP to the configured group:port, 2 if it is
// but comes from another address than the configured source, else 0.
// The UDP port is compared right after its bounds check (in each branch) so
// that clang cannot separate the access from the check the verifier needs.
static __always_inline int match_l3(const struct xdpcast_config *cfg, void *l3,
					       void *data_end, __be16 proto)
{
	if (proto == bpf_htons(ETH_P_IP) && cfg->family == XDPCAST_FAMILY_V4) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > data_end)
			return 0;
		if (ip->version != 4 || ip->protocol != IPPROTO_UDP)
			return 0;
		// Non-first fragments carry no UDP header.
		if (ip->frag_off & bpf_htons(IP_OFFSET_MASK))
			return 0;
		if (ip->daddr != cfg->group4 &&
		    (!cfg->unicast4 || ip->daddr != cfg->unicast4))
			return 0;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return 0;
		struct udphdr *udp = l3 + ihl;
		if ((void *)(udp + 1) > data_end)
			return 0;
		if (udp->dest != cfg->port)
			return 0;
		return cfg->source_set && ip->saddr != cfg->source4 ? 2 : 1;
	}
	if (proto == bpf_htons(ETH_P_IPV6) && cfg->family == XDPCAST_FAMILY_V6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
			return 0;
		const __u32 *d = (const __u32 *)&ip6->daddr;
		const __u32 *g = (const __u32 *)cfg->group6;
		if (d[0] != g[0] || d[1] != g[1] || d[2] != g[2] || d[3] != g[3])
			return 0;
		struct udphdr *udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return 0;
		if (udp->dest != cfg->port)
			return 0;
		const __u32 *sa = (const __u32 *)&ip6->saddr;
		const __u32 *sw = (const __u32 *)cfg->source6;
		if (cfg->source_set &&
		    (sa[0] != sw[0] || sa[1] != sw[1] || sa[2] != sw[2] || sa[3] != sw[3]))
			return 2;
		return 1;
	}
	return 0;
}

static __always_inline int steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	const struct xdpcast_config *cfg = bpf_map_lookup_elem(&XDPCAST_CONFIG, &key);

	if (!cfg || !cfg->enabled)
		return pass();

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return pass();

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		// Another VLAN's frame (or any tagged one on an untagged
		// port, or a stacked 802.1ad tag): not the session's.
		if (!cfg->vlan_set || proto != bpf_htons(ETH_P_8021Q))
			return pass();
		if ((void *)(vh + 1) > data_end)
			return pass();
		if ((bpf_ntohs(vh->tci) & VLAN_VID_MASK) != cfg->vlan)
			return pass();
		proto = vh->encap_proto;
		l3 = vh + 1;
	} else if (cfg->vlan_set) {
		return pass();
	}

	int m = match_l3(cfg, l3, data_end, proto);
	if (!m)
		return pass();

	count(STAT_MATCHED);
	if (m == 2) {
		count(STAT_FOREIGN_SOURCE);
		return XDP_DROP;
	}

	__u32 ppm = cfg->drop_per_million;
	if (ppm && bpf_get_prandom_u32() % 1000000 < ppm) {
		count(STAT_INJECTED_DROP);
		return XDP_DROP;
	}

	// Lower bits of flags = action when the queue has no socket in the map.
	long act = bpf_redirect_map(&XDPCAST_XSKS, ctx->rx_queue_index, XDP_PASS);
	if (act == XDP_REDIRECT) {
		count(STAT_REDIRECTED);
	} else {
		count(STAT_NO_SOCKET);
		count_in(&XDPCAST_UNSERVED, ctx->rx_queue_index); // no-op past the last slot
	}
	return act;
}

// Multi-buffer aware: a frame larger than one buffer (jumbo frames on veth
// or on a driver with multi-buffer XDP) arrives as a first buffer with the
// headers plus fragments, and is redirected whole; only the headers in the
// first buffer are read. Kernels before 5.18 refuse such a program; the
// loader then takes xdpcast_linear, the same code without the frags flag.
SEC("xdp.frags")
int xdpcast(struct xdp_md *ctx)
{
	return steer(ctx);
}

SEC("xdp")
int xdpcast_linear(struct xdp_md *ctx)
{
	return steer(ctx);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
