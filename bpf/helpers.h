/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Small inline helpers shared by the XDP programs. */
#ifndef SLUICE_HELPERS_H
#define SLUICE_HELPERS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The 8-byte ICMP / ICMPv6 header; <linux/icmp.h> drags in libc socket
 * headers that do not build for the BPF target. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define NDISC_ROUTER_SOLICITATION 133
#define NDISC_REDIRECT 137

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

/* IPv4 fragment bits in iphdr.frag_off (host order after bpf_ntohs). */
#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff

/* Copies of the kernel's jhash (lib/jhash.h), used for the flow hash. */
#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_final(a, b, c)            \
	{                                 \
		c ^= b; c -= rol32(b, 14); \
		a ^= c; a -= rol32(c, 11); \
		b ^= a; b -= rol32(a, 25); \
		c ^= b; c -= rol32(b, 16); \
		a ^= c; a -= rol32(c, 4);  \
		b ^= a; b -= rol32(a, 14); \
		c ^= b; c -= rol32(b, 24); \
	}

#define __jhash_mix(a, b, c)                          \
	{                                             \
		a -= c; a ^= rol32(c, 4);  c += b;    \
		b -= a; b ^= rol32(a, 6);  a += c;    \
		c -= b; c ^= rol32(b, 8);  b += a;    \
		a -= c; a ^= rol32(c, 16); c += b;    \
		b -= a; b ^= rol32(a, 19); a += c;    \
		c -= b; c ^= rol32(b, 4);  b += a;    \
	}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += JHASH_INITVAL + initval;
	b += JHASH_INITVAL + initval;
	c += initval;
	__jhash_final(a, b, c);
	return c;
}

/* jhash2 of exactly four words (an IPv6 address). */
static __always_inline __u32 jhash_4words(const __u32 *k, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (4 << 2) + initval;
	a += k[0];
	b += k[1];
	c += k[2];
	__jhash_mix(a, b, c);
	a += k[3];
	__jhash_final(a, b, c);
	return c;
}

/* One's-complement sum folded to 16 bits, for the IPv4 header checksum. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Folds a 64-bit one's-complement accumulator of 16- or 32-bit words to
 * 16 bits, not inverted. Words read in host order from network-order
 * memory give a result that is stored back the same way (RFC 1071). */
static __always_inline __u16 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return csum_fold(sum);
}

static __always_inline void copy_addr6(__u32 *dst, const void *src)
{
	__builtin_memcpy(dst, src, 16);
}

#endif
